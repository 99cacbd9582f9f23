#!/usr/bin/env python3
"""Benchmarks of the whole system on loopback (run through `make bench`).

Every stack is started as `make run` starts it: SecantusDB's compiled server
(secantusd-rs, `--sync-on-commit`, `--cache-size 512M`; the Python server
secantusd-py for one side-by-side column), the release binaries with their
defaults (info logs as JSON, into target/bench/*.log), except: bench
credentials, free ports (metrics listeners included), and the per-key rate
limit raised out of the way (capacity is measured, not the limiter) in every
section but k6. Each section starts its own database server on a fresh store.

Sections (BENCH_SECTIONS, comma-separated; default: all, in this order):
  ingest          wrk at several concurrencies, processor down and working
  end_to_end      P patients x E events at the real 5-6 s processing
  sleeping_lanes  processor CPU while 10,000 patients' events sleep
  side_by_side    5,000 patients x 1 event, 64 senders, on the compiled and
                  the Python server, next to the original NestJS service
  fleet           1,000 x 5 at real timing with 1 and 3 processors; store
                  operations per processed event (from /metrics)
  takeover        SIGKILL one of three processors while events flow: time
                  until its patients' next events start (at a sink)
  accept_to_start idle fleet: 202 to processing start, single spaced events
  memory          RSS after 100,000 and 1,000,000 accepted events (nothing
                  scraping /metrics); ingest RSS under 1 MiB bodies
  k6              tests/load/k6-events.js with its defaults, fast and real
                  processing; its thresholds' verdicts
  burst           open loop 10,000 events/s for 30 s, per 5 s
  soak            open loop 1,000 events/s for 10 minutes, per minute, with
                  RSS of the database and both services, against targets
Before each measurement it waits (up to BENCH_LOAD_WAIT_SECS) while the
1-minute load average is above BENCH_MAX_LOAD, and records the load and the
CPU other processes used while it ran. Benchmarks print figures; they never
assert. Prints tables, writes target/bench/results.json (and results.txt),
target/bench/bench.png and soak.png (copied to docs/).
"""

import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

try:
    import pymongo
except ImportError:  # scripts/bench.sh installs it into .tools/bench-venv
    pymongo = None

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "target" / "bench"
RELEASE = ROOT / "target" / "release"
WRK_SCRIPT = ROOT / "tests" / "load" / "wrk-events.lua"
K6_SCRIPT = ROOT / "tests" / "load" / "k6-events.js"
K6 = ROOT / ".tools" / "k6-venv" / "bin" / "k6"
PYTHON_SERVER = ROOT / ".mongo" / "venv" / "bin" / "secantusd-py"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CLIENT = "bench"
API_KEY = "bench-api-key-0123456789"
PROCESSOR_TOKEN = "bench-processor-token-0123456789"
os.environ["API_KEY"] = API_KEY  # read by wrk-events.lua, loadgen and k6-events.js

env_list = lambda name, default: [x.strip() for x in os.environ.get(name, default).split(",") if x.strip()]
CONCURRENCIES = [int(c) for c in env_list("BENCH_CONCURRENCIES", "1,16,64,256")]
WRK_SECONDS = int(os.environ.get("BENCH_WRK_SECONDS", "10"))
SCALE_PATIENTS = [int(p) for p in env_list("BENCH_PATIENTS", "100,1000,10000")]
EVENTS_PER_PATIENT = int(os.environ.get("BENCH_EVENTS", "5"))
ALL_SECTIONS = ["ingest", "end_to_end", "sleeping_lanes", "side_by_side", "fleet", "takeover",
                "accept_to_start", "memory", "k6", "burst", "soak"]
SECTIONS = env_list("BENCH_SECTIONS", ",".join(ALL_SECTIONS))
SOAK_RATE = float(os.environ.get("BENCH_SOAK_RATE", "1000"))
SOAK_SECONDS = int(os.environ.get("BENCH_SOAK_SECONDS", "600"))
SOAK_PATIENTS = int(os.environ.get("BENCH_SOAK_PATIENTS", "10000"))
BURST_RATE = float(os.environ.get("BENCH_BURST_RATE", "10000"))
BURST_SECONDS = int(os.environ.get("BENCH_BURST_SECONDS", "30"))
SOAK_INTERVAL = int(os.environ.get("BENCH_SOAK_INTERVAL", "60"))
BURST_INTERVAL = 5
SIDE_BY_SIDE_RUNS = int(os.environ.get("BENCH_SIDE_BY_SIDE_RUNS", "2"))
SIDE_BY_SIDE_SERVERS = env_list("BENCH_SIDE_BY_SIDE_SERVERS", "compiled,python")
FLEET_SIZES = [int(n) for n in env_list("BENCH_FLEET_SIZES", "1,3")]
FLEET_PATIENTS = int(os.environ.get("BENCH_FLEET_PATIENTS", "1000"))
FLEET_EVENTS = int(os.environ.get("BENCH_FLEET_EVENTS", "5"))
TAKEOVER_RUNS = int(os.environ.get("BENCH_TAKEOVER_RUNS", "5"))
LATENCY_EVENTS = int(os.environ.get("BENCH_LATENCY_EVENTS", "200"))
LATENCY_GAP_MS = int(os.environ.get("BENCH_LATENCY_GAP_MS", "100"))
MEMORY_EVENTS = [int(n) for n in env_list("BENCH_MEMORY_EVENTS", "100000,1000000")]
# fast: the processor runs with PROCESSING_MIN_MS=0, MAX=1 while events are
# accepted; stopped: it is not started (intake alone).
MEMORY_PROCESSOR = os.environ.get("BENCH_MEMORY_PROCESSOR", "stopped")
LARGE_BODIES = int(os.environ.get("BENCH_LARGE_BODIES", "500"))
LARGE_CONCURRENCY = int(os.environ.get("BENCH_LARGE_CONCURRENCY", "16"))
K6_RUNS = env_list("BENCH_K6_PROCESSING", "100-200,real")
K6_HOLD = os.environ.get("BENCH_K6_HOLD")  # the script's HOLD (its default: 1m)
MAX_LOAD = float(os.environ.get("BENCH_MAX_LOAD", "1.5"))
LOAD_WAIT_SECS = int(os.environ.get("BENCH_LOAD_WAIT_SECS", "1200"))
MONGO_CACHE = os.environ.get("MONGO_CACHE_SIZE", "512M")
REAL = "real 5-6 s"

# The original NestJS service, measured earlier on this same machine (2 cores)
# in the same mode as `side_by_side` (5,000 patients x 1 event, 64 concurrent
# senders, real 5-6 s processing), once on each SecantusDB server. That
# service is not in this repository, so its figures are kept here as
# constants: accepted events/s, POST p99 and the time from the first request
# until every event was processed.
ORIGINAL_NESTJS = [
    {"service": "original (NestJS)", "server": "compiled", "db": "SecantusDB compiled (secantusd-rs)",
     "accept_rate_per_sec": 267, "post_p99_ms": 912, "end_to_end_secs": 26.0},
    {"service": "original (NestJS)", "server": "python", "db": "SecantusDB Python (secantusd-py)",
     "accept_rate_per_sec": 227, "post_p99_ms": 812, "end_to_end_secs": 44.3},
]
SERVER_NAMES = {"compiled": "SecantusDB compiled (secantusd-rs)", "python": "SecantusDB Python (secantusd-py)"}
SIDE_BY_SIDE = {"patients": int(os.environ.get("BENCH_SIDE_BY_SIDE_PATIENTS", "5000")), "events": 1,
                "concurrency": 64}


# ---------------------------------------------------------------- processes

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=60, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if proc is not None and proc.p.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.p.returncode}; see {proc.log_path}")
            time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open")


def wait_healthy(port, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.p.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.p.returncode}; see {proc.log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} on {port} not healthy; see {proc.log_path}")


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def memory_kb(pid, key):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Proc:
    def __init__(self, name, args, env=None, log=None):
        self.name = name
        self.log_path = log or os.devnull
        self.log = open(self.log_path, "w")
        self.p = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                  start_new_session=True)

    @property
    def pid(self):
        return self.p.pid

    def cpu(self):
        return cpu_seconds(self.pid)

    def rss_mb(self):
        return memory_kb(self.pid, "VmRSS") / 1024

    def peak_mb(self):
        return memory_kb(self.pid, "VmHWM") / 1024

    def kill9(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()

    def stop(self, timeout=30):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        if not self.log.closed:
            self.log.close()


def secantusd():
    """SecantusDB's compiled server: the project's own install first, then PATH."""
    local = ROOT / ".tools" / "secantus-rs" / "bin" / "secantusd-rs"
    if local.exists():
        return str(local)
    return shutil.which("secantusd-rs") or os.path.expanduser("~/.cargo/bin/secantusd-rs")


class Database:
    """A SecantusDB server on a fresh store, started as scripts/start-mongo.sh
    starts it for `make run` (compiled) or `LOCAL_MONGO=python make run`."""

    def __init__(self, name, kind="compiled"):
        self.kind = kind
        self.storage = Path(tempfile.mkdtemp(prefix=f"db-{name}-", dir=OUT))
        self.port = free_port()
        common = ["--host", "127.0.0.1", "--port", str(self.port), "--storage-path", str(self.storage),
                  "--log-level", "WARNING", "--sync-on-commit"]
        if kind == "compiled":
            args = [secantusd()] + common + ["--cache-size", MONGO_CACHE, "--log-file-max", "32MB"]
        elif kind == "python":
            args = [str(PYTHON_SERVER)] + common
        else:
            raise ValueError(kind)
        self.proc = Proc(f"secantusd-{kind}", args, log=OUT / f"{name}-db.log")
        wait_port(self.port, proc=self.proc)
        self.base = f"mongodb://127.0.0.1:{self.port}"
        self._client = None

    def client(self):
        if self._client is None:
            self._client = pymongo.MongoClient(self.base, serverSelectionTimeoutMS=30000)
        return self._client

    def stop(self):
        if self._client is not None:
            self._client.close()
        self.proc.stop()
        shutil.rmtree(self.storage, ignore_errors=True)


def scrape(port):
    """`/metrics` of one service as {(name, labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        name, _, labels = key.partition("{")
        try:
            values[(name, "{" + labels if labels else "")] = float(value)
        except ValueError:
            pass
    return values


def label(labels, name):
    marker = f'{name}="'
    start = labels.find(marker)
    if start < 0:
        return ""
    start += len(marker)
    return labels[start:labels.index('"', start)]


class Stack:
    """Ingest and `processors` processor instances on one database of `db`,
    configured as `make run` configures them (see the module docstring)."""

    def __init__(self, db, database, processors=1, processing=None, processor_env=None,
                 ingest_env=None, raise_rate_limit=True):
        self.db = db
        self.database = database
        self.uri = f"{db.base}/{database}"
        self.base_env = {"PATH": os.environ.get("PATH", ""), "MONGO_URI": self.uri, "LOG_FORMAT": "json",
                         "INGEST_API_KEYS": f"{CLIENT}:{API_KEY}", "PROCESSOR_TOKEN": PROCESSOR_TOKEN}
        if raise_rate_limit:
            # Measure capacity, not the default per-key rate limit.
            self.base_env.update(RATE_LIMIT_PER_SEC="1000000", RATE_LIMIT_BURST="1000000")
        self.processor_env = dict(processor_env or {})
        if processing:
            self.processor_env.update(PROCESSING_MIN_MS=str(processing[0]),
                                      PROCESSING_MAX_MS=str(processing[1]))
        self.processors = []
        self.processor_ports = []  # (port, metrics port) per instance
        for _ in range(processors):
            self.add_processor()
        # With no processor, ingest's nudges go to a port where nothing listens.
        processor_port = self.processor_ports[0][0] if self.processors else free_port()
        self.ingest_port, self.ingest_metrics = free_port(), free_port()
        env = dict(self.base_env, PORT=str(self.ingest_port), METRICS_PORT=str(self.ingest_metrics),
                   PROCESSOR_URL=f"http://127.0.0.1:{processor_port}", **(ingest_env or {}))
        self.ingest = Proc("ingest", [str(RELEASE / "ingest")], env, OUT / f"{database}-ingest.log")
        wait_healthy(self.ingest_port, self.ingest)

    def add_processor(self):
        port, metrics = free_port(), free_port()
        env = dict(self.base_env, PORT=str(port), METRICS_PORT=str(metrics), **self.processor_env)
        n = len(self.processors)
        proc = Proc(f"processor-{n}", [str(RELEASE / "processor")], env,
                    OUT / f"{self.database}-processor-{n}.log")
        wait_healthy(port, proc)
        self.processors.append(proc)
        self.processor_ports.append((port, metrics))
        return proc

    @property
    def processor(self):
        return self.processors[0] if self.processors else None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.ingest_port}"

    def mongo(self):
        return self.db.client()[self.database]

    def store_operations(self):
        """`store_operation_seconds_count` by operation, summed over ingest
        and every live processor."""
        ops = {}
        ports = [self.ingest_metrics] + [m for p, (_, m) in zip(self.processors, self.processor_ports)
                                         if p.p.poll() is None]
        for port in ports:
            for (name, labels), value in scrape(port).items():
                if name == "store_operation_seconds_count":
                    op = label(labels, "operation")
                    ops[op] = ops.get(op, 0) + value
        return ops

    def session_of(self, proc):
        doc = self.mongo()["processors"].find_one({"pid": proc.pid})
        return doc["_id"] if doc else None

    def wait_balanced(self, instances, timeout=120):
        """Until the 256 bucket leases are spread over `instances` live
        processors, each with at least 3/4 of a fair share."""
        fair = 256 // instances
        deadline = time.time() + timeout
        started = time.time()
        while time.time() < deadline:
            per_owner = {}
            for lease in self.mongo()["leases"].find({"bucket": {"$exists": True}}, {"owner": 1}):
                if lease.get("owner"):
                    per_owner[lease["owner"]] = per_owner.get(lease["owner"], 0) + 1
            if (sum(per_owner.values()) == 256 and len(per_owner) == instances
                    and all(n >= fair * 3 // 4 for n in per_owner.values())):
                return time.time() - started
            time.sleep(0.25)
        raise RuntimeError(f"leases not spread over {instances} processors within {timeout} s")

    def stop(self, kill=False):
        self.ingest.stop()
        for p in self.processors:
            if kill:
                p.kill9()
            p.stop()


# ---------------------------------------------------------------- load

def loadavg():
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def busy_seconds():
    """CPU time the whole machine spent busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / CLK_TCK


def own_seconds():
    """CPU time of this script and everything it started (running or reaped)."""
    total = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                for f in ("ru_utime", "ru_stime"))
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:  # ppid
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


LOAD_LOG = []


class Measurement:
    """One measurement: waits for a quiet machine first, then records the
    load average and how much CPU processes other than the benchmark's own
    used while it ran (of the machine's cores x 100%)."""

    def __init__(self, label):
        self.label = label

    def __enter__(self):
        waited = time.time()
        first = loadavg()[0]
        while loadavg()[0] > MAX_LOAD and time.time() - waited < LOAD_WAIT_SECS:
            print(f"  load average {loadavg()[0]:.2f} > {MAX_LOAD}: waiting before {self.label}", flush=True)
            time.sleep(30)
        self.entry = {"label": self.label, "load_at_check": first, "waited_s": round(time.time() - waited),
                      "load_at_start": loadavg()[0]}
        self.entry["started_busy_anyway"] = self.entry["load_at_start"] > MAX_LOAD
        self.t0, self.busy0, self.own0 = time.monotonic(), busy_seconds(), own_seconds()
        return self

    def __exit__(self, *exc):
        wall = max(time.monotonic() - self.t0, 1e-9)
        other = (busy_seconds() - self.busy0) - (own_seconds() - self.own0)
        self.entry.update(seconds=round(wall, 1), load_at_end=loadavg(),
                          other_cpu_pct=round(max(other, 0) * 100 / wall, 1))
        LOAD_LOG.append(self.entry)
        print(f"  [{self.label}: load {self.entry['load_at_start']:.2f} at start, other processes used "
              f"{self.entry['other_cpu_pct']:.0f}% CPU (of {100 * os.cpu_count()}%) over "
              f"{wall:.0f} s]", flush=True)
        return False


# ---------------------------------------------------------------- helpers

def percentile(values, q):
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def post_event(url, body, key=None, timeout=30):
    """POST /events; returns (status, parsed body or None, seconds)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    if key:
        headers["Idempotency-Key"] = key
    request = urllib.request.Request(f"{url}/events", data=data, headers=headers, method="POST")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            payload = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        payload, status = e.read(), e.code
    except OSError:
        return None, None, time.monotonic() - started
    try:
        parsed = json.loads(payload) if payload else None
    except ValueError:
        parsed = None
    return status, parsed, time.monotonic() - started


def event_body(patient, n, extra=None):
    data = {"n": n, "test": "glucose", "value": 5.4}
    if extra:
        data.update(extra)
    return {"patientId": patient, "type": "lab_result", "data": data, "ts": "2025-10-01T12:00:00Z"}


class Sink:
    """The downstream system for `DELIVERY_URL`: records when each delivery
    arrived (this process's monotonic clock) and holds it `hold` seconds
    (uniform in the range) before answering 200, as a real system would."""

    def __init__(self, hold=(0.0, 0.0)):
        self.hold = hold
        self.records = []  # (arrived, patientId, eventId, seq)
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                arrived = time.monotonic()
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    event = json.loads(body)
                except ValueError:
                    event = {}
                with sink.lock:
                    sink.records.append((arrived, event.get("patientId"), event.get("eventId"),
                                         event.get("seq")))
                low, high = sink.hold
                if high > 0:
                    time.sleep(random.uniform(low, high))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 1024

            def handle_error(self, request, client_address):
                pass  # a killed processor's connection: nothing to report

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/deliveries"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def snapshot(self):
        with self.lock:
            return list(self.records)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def run_wrk(url, concurrency, seconds=None, run=0):
    threads = min(2, concurrency)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds or WRK_SECONDS}s", "--timeout", "5s",
         "-s", str(WRK_SCRIPT), url],
        capture_output=True, text=True, check=True, env=dict(os.environ, WRK_RUN=str(run))).stdout
    line = next(l for l in out.splitlines() if l.startswith("WRK_JSON "))
    result = json.loads(line[len("WRK_JSON "):])
    result["errors"] = sum(v for k, v in result.items() if k.startswith("errors_"))
    return result


def loadgen(command, stack, **flags):
    args = [str(RELEASE / "loadgen"), command, "--url", stack.url, "--mongo", stack.uri]
    for name, value in flags.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def stamp():
    return f"{int(time.time())}"


# ---------------------------------------------------------------- sections

def bench_ingest(with_processor):
    label = "processor working" if with_processor else "processor down"
    db = Database(f"ingest-{int(with_processor)}")
    stack = Stack(db, f"bench_ingest_{int(with_processor)}_{stamp()}", processors=int(with_processor))
    time.sleep(2)
    idle = {"ingest_rss_mb": stack.ingest.rss_mb()}
    if stack.processor:
        idle["processor_rss_mb"] = stack.processor.rss_mb()
    rows = []
    for run, concurrency in enumerate(CONCURRENCIES, start=1):
        procs = (stack.ingest, db.proc, stack.processor)
        with Measurement(f"ingest {label} c={concurrency}") as m:
            before = [p.cpu() if p else 0 for p in procs]
            result = run_wrk(stack.url, concurrency, run=run)
            after = [p.cpu() if p else 0 for p in procs]
        accepted = max(result["requests"] - result["errors_status"], 1)
        used = [a - b for a, b in zip(after, before)]
        result.update(
            mode=label, concurrency=concurrency, load=m.entry,
            ingest_cpu_s_per_1000=used[0] * 1000 / accepted,
            db_cpu_s_per_1000=used[1] * 1000 / accepted,
            processor_cpu_s_per_1000=used[2] * 1000 / accepted,
            ingest_cpu_pct=used[0] * 100 / result["seconds"],
            db_cpu_pct=used[1] * 100 / result["seconds"],
            processor_cpu_pct=used[2] * 100 / result["seconds"],
        )
        rows.append(result)
        print(f"  ingest ({label}) c={concurrency}: {result['rps']:.0f}/s "
              f"p99 {result['p99_ms']:.1f} ms, errors {result['errors']}", flush=True)
    peak = {"ingest_peak_rss_mb": stack.ingest.peak_mb()}
    stack.stop()
    db.stop()
    return rows, idle, peak


def end_to_end(stack, patients, events, concurrency=64, timeout=900):
    """`loadgen run` against `stack`, with the CPU each process used."""
    procs = [stack.ingest, stack.db.proc] + stack.processors
    before = [p.cpu() for p in procs]
    out = subprocess.run(
        loadgen("run", stack, patients=patients, events=events, concurrency=concurrency, timeout=timeout),
        capture_output=True, text=True, check=True).stdout
    used = [p.cpu() - b for p, b in zip(procs, before)]
    result = json.loads(out)
    processed = max(result["processed"], 1)
    result.update(
        ingest_cpu_s_per_1000_accepted=used[0] * 1000 / max(result["accepted"], 1),
        db_cpu_s_per_1000_processed=used[1] * 1000 / processed,
        processor_cpu_s_per_1000_processed=sum(used[2:]) * 1000 / processed,
        processor_peak_rss_mb=max((p.peak_mb() for p in stack.processors), default=0),
        ingest_peak_rss_mb=stack.ingest.peak_mb(),
        db_peak_rss_mb=stack.db.proc.peak_mb(),
    )
    return result


def bench_end_to_end(patients, events):
    db = Database(f"e2e-{patients}")
    stack = Stack(db, f"bench_e2e_{patients}_{stamp()}")
    time.sleep(1)
    with Measurement(f"end to end {patients} x {events}") as m:
        result = end_to_end(stack, patients, events)
    result["load"] = m.entry
    stack.stop()
    db.stop()
    print(f"  end to end P={patients} E={events}: {result['end_to_end_secs']:.1f} s "
          f"({result['ratio_to_ideal']:.2f}x ideal), {result['events_per_min']:.0f} events/min, "
          f"order violations {result['order_violations']}, lost {result['lost']}, "
          f"duplicates {result['duplicates']}", flush=True)
    return result


def bench_sleeping_lanes(patients=10_000):
    """Processor CPU while `patients` lanes each sleep in a 30 s event."""
    db = Database("lanes")
    stack = Stack(db, f"bench_lanes_{stamp()}", processing=(30_000, 30_000))
    with Measurement("sleeping lanes") as m:
        subprocess.run(loadgen("run", stack, patients=patients, events=1, concurrency=64, timeout=1),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Until every event is claimed (all lanes asleep in their 30 s event).
        deadline = time.time() + 20
        queued = stack.mongo()["queued_events"]
        while time.time() < deadline and queued.count_documents({"claim": {"$exists": False}}) > 0:
            time.sleep(0.5)
        unclaimed = queued.count_documents({"claim": {"$exists": False}})
        window = 5.0
        before = stack.processor.cpu()
        rss = stack.processor.rss_mb()
        time.sleep(window)
        cpu = stack.processor.cpu() - before
    result = {"patients": patients, "window_s": window, "processor_cpu_s": cpu, "unclaimed": unclaimed,
              "processor_cpu_pct": cpu * 100 / window, "processor_rss_mb": rss, "load": m.entry}
    stack.stop(kill=True)
    db.stop()
    print(f"  {patients} sleeping lanes: processor CPU {result['processor_cpu_pct']:.2f}% "
          f"RSS {rss:.1f} MB ({unclaimed} not yet claimed)", flush=True)
    return result


def bench_side_by_side():
    """This system in the mode the original NestJS service was measured in,
    on a fresh store of each SecantusDB server, SIDE_BY_SIDE_RUNS times."""
    p, e, c = SIDE_BY_SIDE["patients"], SIDE_BY_SIDE["events"], SIDE_BY_SIDE["concurrency"]
    runs = []
    for server in SIDE_BY_SIDE_SERVERS:
        for n in range(1, SIDE_BY_SIDE_RUNS + 1):
            db = Database(f"sbs-{server}-{n}", kind=server)
            stack = Stack(db, f"bench_sbs_{server}_{n}_{stamp()}")
            time.sleep(1)
            with Measurement(f"side by side {server} run {n}") as m:
                ours = end_to_end(stack, p, e, concurrency=c, timeout=1800)
            ours.update(server=server, run=n, load=m.entry)
            stack.stop()
            db.stop()
            runs.append(ours)
            print(f"  side by side on {server}, run {n}: {ours['accept_rate_per_sec']:.0f} accepted/s, "
                  f"POST p50 {ours['post_p50_ms']:.1f} ms p99 {ours['post_p99_ms']:.1f} ms "
                  f"max {ours['post_max_ms']:.0f} ms, all processed after {ours['end_to_end_secs']:.1f} s, "
                  f"lost {ours['lost']}, duplicates {ours['duplicates']}", flush=True)
    return {"settings": SIDE_BY_SIDE, "runs": runs, "original": ORIGINAL_NESTJS}


def bench_fleet():
    """P x E at the real timing with 1 and 3 processors; store operations
    per processed event, from every service's /metrics before and after."""
    rows = []
    for n in FLEET_SIZES:
        db = Database(f"fleet-{n}")
        stack = Stack(db, f"bench_fleet_{n}_{stamp()}", processors=n)
        balanced_after = stack.wait_balanced(n)
        time.sleep(1)
        with Measurement(f"fleet {n} processor(s)") as m:
            before = stack.store_operations()
            result = end_to_end(stack, FLEET_PATIENTS, FLEET_EVENTS)
            after = stack.store_operations()
        processed = max(result["processed"], 1)
        ops = {op: after.get(op, 0) - before.get(op, 0) for op in after}
        ops = {op: v for op, v in sorted(ops.items(), key=lambda kv: -kv[1]) if v > 0}
        result.update(processors=n, load=m.entry, balanced_after_s=balanced_after,
                      store_ops_total=sum(ops.values()),
                      store_ops_per_event=sum(ops.values()) / processed,
                      store_ops_per_event_by_operation={op: v / processed for op, v in ops.items()})
        stack.stop()
        db.stop()
        rows.append(result)
        print(f"  fleet of {n}: {result['end_to_end_secs']:.1f} s ({result['ratio_to_ideal']:.2f}x ideal), "
              f"order violations {result['order_violations'] + result['overlap_violations']}, "
              f"lost {result['lost']}, duplicates {result['duplicates']}; "
              f"{result['store_ops_per_event']:.2f} store operations per processed event", flush=True)
    return rows


def post_patients(url, patients, events, prefix, threads=16):
    """Each patient's `events` posted in order (patients concurrently);
    returns the eventIds in posting order per patient."""
    def one(patient):
        ids = []
        for n in range(events):
            for _ in range(50):
                status, body, _ = post_event(url, event_body(patient, n), key=f"{patient}-{n}")
                if status == 202:
                    ids.append(body["eventId"])
                    break
                time.sleep(0.1)
        return patient, ids
    with ThreadPoolExecutor(threads) as pool:
        return dict(pool.map(one, [f"{prefix}-{p}" for p in range(patients)]))


def takeover_run(i, patients=90, events=6):
    """Three processors delivering to a sink that holds each event 5-6 s;
    SIGKILL one of them once deliveries are under way; the time from the
    kill until its patients' next events reach the sink."""
    db = Database(f"takeover-{i}")
    sink = Sink(hold=(5.0, 6.0))
    stack = Stack(db, f"bench_takeover_{i}_{stamp()}", processors=3,
                  processor_env={"DELIVERY_URL": sink.url})
    try:
        balanced_after = stack.wait_balanced(3)
        accepted = post_patients(stack.url, patients, events, f"takeover{i}")
        # Deliveries under way (every patient's first event started), then
        # a moment into them so the kill strikes events in hand.
        deadline = time.time() + 60
        while time.time() < deadline and len(sink.snapshot()) < patients:
            time.sleep(0.1)
        time.sleep(random.uniform(0.5, 4.5))
        victim = stack.processors[1]
        session = stack.session_of(victim)
        buckets = {l["bucket"] for l in stack.mongo()["leases"].find({"owner": session, "bucket": {"$exists": True}})}
        in_hand = stack.mongo()["queued_events"].count_documents({"status": "queued", "claim.owner": session})
        victim.kill9()
        killed_at = time.monotonic()
        queued = stack.mongo()["queued_events"]
        victim_patients = {d["patientId"] for d in queued.find({"bucket": {"$in": list(buckets)}}, {"patientId": 1})}
        # Patients of the victim with work left at the kill.
        waiting = {d["patientId"] for d in queued.find(
            {"bucket": {"$in": list(buckets)}, "status": "queued"}, {"patientId": 1})}
        first_after = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            for arrived, patient, _event, _seq in sink.snapshot():
                if arrived > killed_at and patient in waiting and patient not in first_after:
                    first_after[patient] = arrived - killed_at
            if len(first_after) == len(waiting):
                break
            time.sleep(0.1)
        # How the survivors logged the takeover.
        logs = [Path(p.log_path).read_text(errors="replace") for p in stack.processors if p is not victim]
        took_over = sum(l.count("took over buckets of processors whose session ended") for l in logs)
        result = {"run": i, "victim_buckets": len(buckets), "victim_patients": len(victim_patients),
                  "victim_patients_waiting": len(waiting), "events_in_hand": in_hand,
                  "first_resumed_s": min(first_after.values()) if first_after else None,
                  "all_resumed_s": max(first_after.values()) if len(first_after) == len(waiting) and waiting else None,
                  "resumed_patients": len(first_after), "balanced_after_s": balanced_after,
                  "takeover_log_lines": took_over, "accepted": sum(len(v) for v in accepted.values())}
    finally:
        stack.stop(kill=True)
        sink.stop()
        db.stop()
    return result


def bench_takeover():
    runs = []
    for i in range(1, TAKEOVER_RUNS + 1):
        with Measurement(f"takeover run {i}") as m:
            r = takeover_run(i)
        r["load"] = m.entry
        runs.append(r)
        first = "-" if r["first_resumed_s"] is None else f"{r['first_resumed_s']:.2f} s"
        every = "-" if r["all_resumed_s"] is None else f"{r['all_resumed_s']:.2f} s"
        print(f"  takeover run {i}: killed a processor with {r['victim_buckets']} buckets, "
              f"{r['events_in_hand']} events in hand, {r['victim_patients_waiting']} patients waiting; "
              f"first resumed after {first}, all after {every}", flush=True)
    firsts = [r["first_resumed_s"] for r in runs if r["first_resumed_s"] is not None]
    alls = [r["all_resumed_s"] for r in runs if r["all_resumed_s"] is not None]
    return {"runs": runs, "lease_ms": 10000,
            "first_resumed_p50_s": percentile(firsts, 0.5), "first_resumed_max_s": max(firsts, default=None),
            "all_resumed_p50_s": percentile(alls, 0.5), "all_resumed_max_s": max(alls, default=None),
            "runs_not_all_resumed": sum(1 for r in runs if r["all_resumed_s"] is None)}


def bench_accept_to_start():
    """With three idle processors delivering to a sink, single events spaced
    LATENCY_GAP_MS apart (each to a new patient, so spread over the owners):
    from the 202 at the client to the delivery's arrival at the sink; and
    from the stored acceptedAt to the claim's time (claim.at)."""
    db = Database("latency")
    sink = Sink()
    stack = Stack(db, f"bench_latency_{stamp()}", processors=3, processor_env={"DELIVERY_URL": sink.url})
    try:
        stack.wait_balanced(3)
        nudged = stack.session_of(stack.processors[0])  # the processor ingest's /queue nudges go to
        time.sleep(2)
        sent = {}
        with Measurement("accept to start") as m:
            for i in range(LATENCY_EVENTS):
                status, body, _ = post_event(stack.url, event_body(f"latency-{i}", 0), key=f"latency-{i}")
                if status == 202:
                    sent[body["eventId"]] = time.monotonic()
                time.sleep(LATENCY_GAP_MS / 1000)
            time.sleep(3)
        arrived = {}
        for at, _patient, event_id, _seq in sink.snapshot():
            arrived.setdefault(event_id, at)
        docs = {d["_id"]: d for d in stack.mongo()["queued_events"].find(
            {"_id": {"$in": list(sent)}}, {"acceptedAt": 1, "claim": 1})}
    finally:
        stack.stop()
        sink.stop()
        db.stop()
    sink_ms, claim_ms, by_path = [], [], {"nudged owner": [], "change stream only": []}
    for event_id, accepted_at in sent.items():
        if event_id in arrived:
            ms = (arrived[event_id] - accepted_at) * 1000
            sink_ms.append(ms)
            d = docs.get(event_id)
            if d and d.get("claim"):
                owner = d["claim"].get("owner")
                by_path["nudged owner" if owner == nudged else "change stream only"].append(ms)
        d = docs.get(event_id)
        if d and d.get("claim") and d.get("acceptedAt"):
            claim_ms.append((d["claim"]["at"] - d["acceptedAt"]).total_seconds() * 1000)
    stats = lambda v: {"n": len(v), "p50_ms": percentile(v, 0.5), "p99_ms": percentile(v, 0.99),
                       "max_ms": max(v, default=None), "min_ms": min(v, default=None)}
    result = {"events": LATENCY_EVENTS, "gap_ms": LATENCY_GAP_MS, "accepted": len(sent),
              "started": len(sink_ms), "load": m.entry,
              "sink": stats(sink_ms), "claim": stats(claim_ms),
              "by_path": {k: stats(v) for k, v in by_path.items()}}
    s = result["sink"]
    print(f"  accept to start ({len(sink_ms)} of {len(sent)} started): 202 -> sink p50 {s['p50_ms']:.1f} ms "
          f"p99 {s['p99_ms']:.1f} ms max {s['max_ms']:.1f} ms; acceptedAt -> claim.at p50 "
          f"{result['claim']['p50_ms']:.1f} ms p99 {result['claim']['p99_ms']:.1f} ms", flush=True)
    return result


def bench_memory():
    """RSS of both services after MEMORY_EVENTS accepted events (wrk, c=64),
    nothing scraping /metrics; then ingest under 1 MiB bodies."""
    db = Database("memory")
    fast = MEMORY_PROCESSOR == "fast"
    stack = Stack(db, f"bench_memory_{stamp()}", processors=1 if fast else 0, processing=(0, 1))
    queued = stack.mongo()["queued_events"]
    processed = stack.mongo()["processed_events"]
    time.sleep(2)
    idle = {"ingest_rss_mb": stack.ingest.rss_mb(),
            "processor_rss_mb": stack.processor.rss_mb() if fast else None, "db_rss_mb": db.proc.rss_mb()}
    points = []
    started = time.monotonic()
    run = 0
    with Measurement(f"memory: {MEMORY_EVENTS[-1]:,} accepted events") as m:
        for target in MEMORY_EVENTS:
            while True:
                count = queued.estimated_document_count()
                if count >= target:
                    break
                elapsed = max(time.monotonic() - started, 1)
                rate = max(count / elapsed, 500)
                seconds = int(min(30, max(2, (target - count) / rate)))
                run += 1
                run_wrk(stack.url, 64, seconds=seconds, run=run)
            points.append({"target": target, "accepted": queued.estimated_document_count(),
                           "processed": processed.estimated_document_count() if fast else 0,
                           "after_s": time.monotonic() - started,
                           "ingest_rss_mb": stack.ingest.rss_mb(),
                           "processor_rss_mb": stack.processor.rss_mb() if fast else None,
                           "db_rss_mb": db.proc.rss_mb()})
            p = points[-1]
            print(f"  after {p['accepted']:,} accepted ({p['after_s']:.0f} s): ingest {p['ingest_rss_mb']:.1f} MB"
                  + (f", processor {p['processor_rss_mb']:.1f} MB ({p['processed']:,} processed)" if fast else "")
                  + f", database {p['db_rss_mb']:.0f} MB", flush=True)
    peaks = {"ingest_peak_rss_mb": stack.ingest.peak_mb(),
             "processor_peak_rss_mb": stack.processor.peak_mb() if fast else None}
    stack.stop()
    result = {"processor": "fast (PROCESSING_MIN_MS=0, MAX=1)" if fast else "stopped (not started)",
              "idle": idle, "points": points, "peaks": peaks, "load": m.entry}
    if len(points) >= 2:
        a, b = points[0], points[-1]
        result["growth"] = {name: (b[f"{name}_rss_mb"] / a[f"{name}_rss_mb"] - 1) * 100
                            for name in ("ingest", "processor") if a[f"{name}_rss_mb"]}
    # Large bodies: a fresh database on the same server, no processor.
    big = Stack(db, f"bench_large_{stamp()}", processors=0)
    time.sleep(1)
    before = big.ingest.rss_mb()
    size = 1024 * 1024 - 512
    filler = size - len(json.dumps(event_body("large-0", 0, {"blob": ""})).encode())
    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(big.ingest.rss_mb())
            time.sleep(0.05)

    def one(i):
        body = json.dumps(event_body(f"large-{i % 100}", i, {"blob": "x" * (filler - len(str(i)) + 1)}))
        return post_event(big.url, body.encode(), key=f"large-{i}", timeout=60)

    statuses = {}
    with Measurement("memory: 1 MiB bodies") as m2:
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.monotonic()
        with ThreadPoolExecutor(LARGE_CONCURRENCY) as pool:
            for status, _, _ in pool.map(one, range(LARGE_BODIES)):
                statuses[str(status)] = statuses.get(str(status), 0) + 1
        took = time.monotonic() - t0
        stop.set()
        sampler.join()
        time.sleep(2)
    result["large_bodies"] = {"bodies": LARGE_BODIES, "concurrency": LARGE_CONCURRENCY, "body_bytes": size,
                              "statuses": statuses, "seconds": took, "ingest_rss_before_mb": before,
                              "ingest_rss_max_sampled_mb": max(samples, default=before),
                              "ingest_peak_rss_mb": big.ingest.peak_mb(),
                              "ingest_rss_after_mb": big.ingest.rss_mb(), "load": m2.entry}
    big.stop()
    db.stop()
    lb = result["large_bodies"]
    print(f"  {LARGE_BODIES} bodies of 1 MiB, {LARGE_CONCURRENCY} concurrent: {statuses} in {took:.1f} s; "
          f"ingest RSS {before:.1f} -> peak {lb['ingest_peak_rss_mb']:.1f} -> {lb['ingest_rss_after_mb']:.1f} MB",
          flush=True)
    return result


def bench_k6():
    """tests/load/k6-events.js with its defaults against a make-run stack
    (default rate limit included), once per processing setting."""
    if not K6.exists():
        raise RuntimeError(f"{K6} missing (scripts/bench.sh installs it)")
    runs = []
    for setting in K6_RUNS:
        processing = None if setting == "real" else tuple(int(x) for x in setting.split("-"))
        db = Database(f"k6-{setting}")
        stack = Stack(db, f"bench_k6_{setting.replace('-', '_')}_{stamp()}", processing=processing,
                      raise_rate_limit=False)
        summary_path = OUT / f"k6-{setting}-summary.json"
        with Measurement(f"k6, processing {setting}") as m:
            proc = subprocess.run(
                [str(K6), "run", "--quiet", "--no-color", "--summary-export", str(summary_path),
                 "-e", f"BASE_URL={stack.url}", "-e", f"API_KEY={API_KEY}"]
                + (["-e", f"HOLD={K6_HOLD}"] if K6_HOLD else []) + [str(K6_SCRIPT)],
                capture_output=True, text=True, env=dict(os.environ, K6_NO_USAGE_REPORT="true"))
        (OUT / f"k6-{setting}.log").write_text(proc.stdout + proc.stderr)
        stack.stop()
        db.stop()
        metrics = json.loads(summary_path.read_text())["metrics"]
        duration = metrics.get("http_req_duration", {})
        failed = metrics.get("http_req_failed", {})
        checks = metrics.get("checks", {})
        dropped = metrics.get("dropped_iterations", {}).get("count", 0)
        failed_rate = failed.get("value", 0)
        checks_rate = checks.get("value", 1)
        r = {"processing": "real 5-6 s" if processing is None else f"{processing[0]}-{processing[1]} ms",
             "exit_code": proc.returncode, "thresholds_passed": proc.returncode == 0,
             "p95_ms": duration.get("p(95)"), "p90_ms": duration.get("p(90)"), "med_ms": duration.get("med"),
             "max_ms": duration.get("max"), "failed_rate": failed_rate, "checks_rate": checks_rate,
             "requests": metrics.get("http_reqs", {}).get("count"),
             "iterations": metrics.get("iterations", {}).get("count"), "dropped_iterations": dropped,
             "threshold_failed_lt_1pct": failed_rate < 0.01,
             "threshold_p95_lt_100ms": (duration.get("p(95)") or 0) < 100,
             "threshold_checks_gt_99pct": checks_rate > 0.99, "load": m.entry}
        runs.append(r)
        print(f"  k6 ({r['processing']}): thresholds {'passed' if r['thresholds_passed'] else 'FAILED'} "
              f"(exit {proc.returncode}); p95 {r['p95_ms']:.1f} ms, failed {failed_rate * 100:.2f}%, "
              f"{r['iterations']} iterations, {dropped} dropped", flush=True)
    return runs


PROCESS_NAMES = ("db", "ingest", "processor")


def bench_open_loop(mode, rate, seconds, patients, interval):
    """Runs `loadgen soak|burst` on a fresh stack at the real processing time;
    at every interval line it prints, samples RSS and CPU of the database and
    both services and adds them to that interval's row."""
    db = Database(mode)
    stack = Stack(db, f"bench_{mode}_{stamp()}")
    time.sleep(1)
    procs = {"db": db.proc, "ingest": stack.ingest, "processor": stack.processor}
    args = loadgen(mode, stack, rate=rate, seconds=seconds, patients=patients, interval=interval)
    rows, summary = [], None
    with Measurement(f"{mode} {rate:.0f}/s for {seconds} s") as m, open(OUT / f"{mode}-loadgen.log", "w") as log:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True)
        last_cpu = {name: p.cpu() for name, p in procs.items()}
        last_at = time.monotonic()
        for line in proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            row = json.loads(line)
            if row["kind"] in ("minute", "interval"):
                now = time.monotonic()
                for name, p in procs.items():
                    cpu = p.cpu()
                    row[f"{name}_cpu_pct"] = (cpu - last_cpu[name]) * 100 / max(now - last_at, 1e-9)
                    row[f"{name}_rss_mb"] = p.rss_mb()
                    last_cpu[name] = cpu
                row["loadavg"] = loadavg()[0]
                last_at = now
                rows.append(row)
                print("  " + interval_line(row), flush=True)
            elif row["kind"] == "summary":
                summary = row
        if proc.wait() != 0 or summary is None:
            stack.stop()
            db.stop()
            raise RuntimeError(f"loadgen {mode} failed (see {OUT / f'{mode}-loadgen.log'})")
    summary["peak_rss_mb"] = {"ingest": stack.ingest.peak_mb(), "processor": stack.processor.peak_mb(),
                              "db": db.proc.peak_mb()}
    stack.stop()
    db.stop()
    print(f"  {mode}: sent {summary['sent']}, accepted {summary['accepted']}, errors {summary['errors']}, "
          f"dropped by the client {summary['dropped_by_client']}; drained in {summary['drain_secs']:.1f} s "
          f"({'complete' if summary['drained'] else 'NOT complete'}); {lost_text(summary)}, "
          f"duplicated {summary['duplicated']}; driver CPU {summary['driver_cpu_pct_sending']:.0f}% "
          f"of a core", flush=True)
    return {"settings": {"rate": rate, "seconds": seconds, "patients": patients, "interval_secs": interval},
            "intervals": rows, "summary": summary, "load": m.entry}


def lost_text(s):
    if s["lost"] is not None:
        return f"lost {s['lost']}"
    return (f"lost unknown: {s['without_outcome']} accepted events still without an outcome "
            f"when the drain timed out")


def soak_targets(soak):
    """Whether the soak stayed steady: first minute against last minute."""
    rows, summary = soak["intervals"], soak["summary"]
    if len(rows) < 2:
        return {"note": "needs at least two intervals"}
    first, last = rows[0], rows[-1]
    rate = soak["settings"]["rate"]
    targets = {}
    targets["p99"] = {"first_ms": first["p99_ms"], "last_ms": last["p99_ms"],
                      "met": last["p99_ms"] <= 1.5 * first["p99_ms"]}
    # Backlog rule: in a steady state the backlog is the events being
    # processed (rate x 5-6 s) plus those waiting for their patient's lane;
    # with each patient receiving an event only every patients/rate = 10 s,
    # none should wait. A minute-boundary snapshot may differ from the first
    # by the arrivals of a few seconds of jitter; a last backlog above the
    # first by more than 10 s of arrivals (10 x rate events) means the
    # processing fell behind for at least 10 s net, and so is not bounded.
    allowed = first["backlog"] + 10 * rate if first["backlog"] is not None else None
    targets["backlog"] = {"first": first["backlog"], "last": last["backlog"], "allowed_last": allowed,
                          "met": allowed is not None and last["backlog"] is not None
                          and last["backlog"] <= allowed}
    rss = {}
    for name in PROCESS_NAMES:
        a, b = first[f"{name}_rss_mb"], last[f"{name}_rss_mb"]
        rss[name] = {"first_mb": a, "last_mb": b, "met": b <= a * 1.10}
    targets["rss_flat"] = {"processes": rss, "met": all(r["met"] for r in rss.values())}
    targets["errors"] = {"errors": summary["errors"], "dropped_by_client": summary["dropped_by_client"],
                         "met": summary["errors"] == 0 and summary["dropped_by_client"] == 0}
    targets["met"] = all(t["met"] for t in targets.values())
    return targets



# ---------------------------------------------------------------- tables

def interval_line(r):
    backlog = "-" if r["backlog"] is None else f"{r['backlog']}"
    return (f"{r['end_s']:>7.0f}{r['sent']:>8}{r['accepted']:>8}{r['status_429']:>6}{r['status_503']:>7}"
            f"{r['status_other']:>6}{r['transport_errors']:>7}{r['dropped_by_client']:>8}"
            f"{r['p50_ms']:>8.1f}{r['p99_ms']:>8.1f}{r['max_ms']:>8.0f}{r['accepted_so_far']:>9}"
            f"{backlog:>8}{r['driver_cpu_pct']:>6.0f}"
            f"{r['db_rss_mb']:>7.0f}/{r['ingest_rss_mb']:.0f}/{r['processor_rss_mb']:.0f}"
            f"{r['db_cpu_pct']:>7.0f}/{r['ingest_cpu_pct']:.0f}/{r['processor_cpu_pct']:.0f}")


INTERVAL_HEADER = (f"{'t s':>7}{'sent':>8}{'202':>8}{'429':>6}{'503':>7}{'other':>6}{'transp':>7}"
                   f"{'dropped':>8}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'accepted':>9}{'backlog':>8}"
                   f"{'drv%':>6}{'RSS MB db/ing/proc':>20}{'CPU% db/ing/proc':>18}")


def open_loop_table(title, run):
    s = run["summary"]
    lines = [title, INTERVAL_HEADER]
    lines += [interval_line(r) for r in run["intervals"]]
    lines.append(f"  sent {s['sent']} ({s['achieved_send_rate']:.0f}/s), accepted {s['accepted']} "
                 f"({s['accepted_rate']:.0f}/s), 429 {s['status_429']}, 503 {s['status_503']}, "
                 f"other {s['status_other']}, transport {s['transport_errors']}, dropped by the client "
                 f"{s['dropped_by_client']}; latency p50 {s['p50_ms']:.1f} ms p99 {s['p99_ms']:.1f} ms "
                 f"max {s['max_ms']:.0f} ms")
    lines.append(f"  backlog drained in {s['drain_secs']:.1f} s after the last interval "
                 f"({'complete' if s['drained'] else 'NOT complete'}); {lost_text(s)}, "
                 f"duplicated {s['duplicated']} of {s['accepted_ids']} accepted eventIds")
    if s["unexpected_processed"]:
        lines.append(f"  {s['unexpected_processed']} outcomes of events the driver never saw a 202 for "
                     f"(requests that timed out at the client after ingest had stored them)")
    lines.append(f"  driver fell behind its schedule by at most {s['start_lag_max_ms']:.0f} ms "
                 f"(latencies are measured from when each request was due)")
    lines.append(f"  driver (loadgen) CPU: {s['driver_cpu_secs_sending']:.1f} s while sending, "
                 f"{s['driver_cpu_pct_sending']:.0f}% of one core")
    return lines


def soak_target_lines(t):
    if "met" not in t:
        return [f"  targets: {t.get('note', 'not evaluated')}"]
    verdict = lambda ok: "met" if ok else "MISSED"
    rss = ", ".join(f"{n} {r['first_mb']:.0f} -> {r['last_mb']:.0f} MB"
                    for n, r in t["rss_flat"]["processes"].items())
    return [
        f"  targets: {verdict(t['met'])}",
        f"    p99 last minute within 1.5x of the first: {t['p99']['first_ms']:.1f} -> "
        f"{t['p99']['last_ms']:.1f} ms: {verdict(t['p99']['met'])}",
        f"    backlog bounded (last <= first + 10 s of arrivals): {t['backlog']['first']} -> "
        f"{t['backlog']['last']} (allowed {t['backlog']['allowed_last']}): {verdict(t['backlog']['met'])}",
        f"    RSS flat (last within 10% of the first minute): {rss}: {verdict(t['rss_flat']['met'])}",
        f"    errors 0 and no client drops: {t['errors']['errors']} errors, "
        f"{t['errors']['dropped_by_client']} dropped: {verdict(t['errors']['met'])}",
    ]


def plot_soak(soak, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no soak plot", file=sys.stderr)
        return False
    rows = soak["intervals"]
    xs = [r["end_s"] / 60 for r in rows]
    fig, (lat, backlog, rss) = plt.subplots(1, 3, figsize=(15, 4.5))
    lat.plot(xs, [r["p50_ms"] for r in rows], marker="o", label="p50")
    lat.plot(xs, [r["p99_ms"] for r in rows], marker="o", label="p99")
    lat.set_xlabel("minute")
    lat.set_ylabel("POST /events latency (ms)")
    lat.set_title(f"Latency per minute at {soak['settings']['rate']:.0f} events/s")
    lat.set_ylim(bottom=0)
    lat.legend(fontsize=8)
    backlog.plot(xs, [r["backlog"] if r["backlog"] is not None else float("nan") for r in rows],
                 marker="o", color="tab:red", label="accepted - processed")
    backlog.axhline(soak["settings"]["rate"] * 5.5, color="grey", linewidth=0.8, linestyle=":",
                    label="rate x 5.5 s (in processing)")
    backlog.set_xlabel("minute")
    backlog.set_ylabel("events")
    backlog.set_title("Backlog at each minute boundary")
    backlog.set_ylim(bottom=0)
    backlog.legend(fontsize=8)
    for name, label in (("db", "database (secantusd-rs)"), ("ingest", "ingest"), ("processor", "processor")):
        rss.plot(xs, [r[f"{name}_rss_mb"] for r in rows], marker="o", label=label)
    rss.set_xlabel("minute")
    rss.set_ylabel("RSS (MB)")
    rss.set_title("Resident memory per minute")
    rss.set_ylim(bottom=0)
    rss.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def ingest_lines(results):
    lines = []
    lines.append("Ingest (wrk, durable accepts)")
    lines.append(f"{'mode':<18}{'conc':>5}{'accepts/s':>11}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}"
                 f"{'max ms':>8}{'errors':>7}{'cpu% ing/db/proc':>20}")
    for r in results["ingest"]:
        lines.append(f"{r['mode']:<18}{r['concurrency']:>5}{r['rps']:>11.0f}{r['p50_ms']:>8.1f}"
                     f"{r['p95_ms']:>8.1f}{r['p99_ms']:>8.1f}{r['max_ms']:>8.0f}{r['errors']:>7}"
                     f"{r['ingest_cpu_pct']:>8.0f}/{r['db_cpu_pct']:.0f}/{r['processor_cpu_pct']:.0f}")
    lines.append("")
    return lines


def end_to_end_lines(results):
    lines = []
    lines.append("End to end (real 5-6 s processing, 64 concurrent requests)")
    lines.append(f"{'patients':>9}{'events':>8}{'accept s':>9}{'last done s':>12}{'ideal s':>8}"
                 f"{'ratio':>7}{'events/min':>11}{'order viol.':>12}{'lost':>5}{'dup':>5}"
                 f"{'proc MB':>8}{'cpu s/1k proc':>14}")
    for r in results["end_to_end"]:
        lines.append(f"{r['patients']:>9}{r['accepted']:>8}{r['accept_secs']:>9.1f}"
                     f"{r['end_to_end_secs']:>12.1f}{r['ideal_secs']:>8.1f}{r['ratio_to_ideal']:>7.2f}"
                     f"{r['events_per_min']:>11.0f}{r['order_violations'] + r['overlap_violations']:>12}"
                     f"{r['lost']:>5}{r['duplicates']:>5}{r['processor_peak_rss_mb']:>8.1f}"
                     f"{r['processor_cpu_s_per_1000_processed']:>14.2f}")
    lines.append("")
    return lines


def footprint_lines(results):
    lines = ["Footprint"]
    f = results.get("footprint")
    if f:
        lines.append(f"  idle RSS: ingest {f['ingest_idle_rss_mb']:.1f} MB, processor {f['processor_idle_rss_mb']:.1f} MB")
        lines.append(f"  peak RSS: ingest {f['ingest_peak_rss_mb']:.1f} MB, processor {f['processor_peak_rss_mb']:.1f} MB")
    s = results.get("sleeping_lanes")
    if s:
        lines.append(f"  {s['patients']} sleeping lanes: processor {s['processor_cpu_pct']:.2f}% CPU "
                     f"over {s['window_s']:.0f} s, RSS {s['processor_rss_mb']:.1f} MB")
    lines.append("")
    return lines


def plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for mode, style in (("processor down", "-"), ("processor working", "--")):
        rows = [r for r in results["ingest"] if r["mode"] == mode]
        if not rows:
            continue
        xs = [r["concurrency"] for r in rows]
        for key, label, color in (("p50_ms", "p50", "tab:blue"), ("p95_ms", "p95", "tab:orange"),
                                  ("p99_ms", "p99", "tab:red")):
            left.plot(xs, [r[key] for r in rows], style, color=color, marker="o",
                      label=f"{label} ({mode})")
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("concurrent connections")
    left.set_ylabel("ingest latency (ms)")
    left.set_title("Ingest latency percentiles")
    left.axhline(100, color="grey", linewidth=0.8, linestyle=":")
    left.legend(fontsize=7)
    rows = results["end_to_end"]
    right.plot([r["patients"] for r in rows], [r["events_per_min"] for r in rows], marker="o",
               label="measured")
    right.plot([r["patients"] for r in rows],
               [r["patients"] * 60 / (r["mean_processing_ms"] / 1000) for r in rows], ":", marker="x",
               label="ideal (patients x 60 / 5.5 s)")
    right.axhline(1000, color="grey", linewidth=0.8, linestyle="--", label="original target 1,000/min")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("concurrently active patients")
    right.set_ylabel("events processed per minute")
    right.set_title("End to end at the real 5-6 s processing")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True




def fmt(value, spec=".1f", none="-"):
    return none if value is None else format(value, spec)


def side_by_side_lines(sbs):
    st = sbs["settings"]
    lines = [f"Side by side with the original ({st['patients']:,} patients x {st['events']} event, "
             f"{st['concurrency']} concurrent senders, real 5-6 s processing, fresh store each run)",
             f"{'service':<22}{'database':<36}{'accepted/s':>11}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}"
             f"{'all processed after':>21}{'lost/dup':>9}"]
    for o in sbs["runs"]:
        lines.append(f"{'this (Rust), run ' + str(o['run']):<22}{SERVER_NAMES[o['server']]:<36}"
                     f"{o['accept_rate_per_sec']:>11.0f}{o['post_p50_ms']:>8.1f}{o['post_p99_ms']:>8.1f}"
                     f"{o['post_max_ms']:>8.0f}{o['end_to_end_secs']:>19.1f} s{o['lost']:>5}/{o['duplicates']}")
    for r in sbs["original"]:
        lines.append(f"{r['service']:<22}{r['db']:<36}{r['accept_rate_per_sec']:>11.0f}{'-':>8}"
                     f"{r['post_p99_ms']:>8.0f}{'-':>8}{r['end_to_end_secs']:>19.1f} s{'-':>9}")
    errors = sum(o["post_errors"] for o in sbs["runs"])
    lines.append(f"  POST errors over all runs: {errors}; order violations: "
                 f"{sum(o['order_violations'] + o['overlap_violations'] for o in sbs['runs'])}")
    return lines


def fleet_lines(rows):
    lines = [f"Fleet ({rows[0]['patients']:,} patients x {rows[0]['events_per_patient']} events, real 5-6 s "
             f"processing, 64 concurrent senders; target: within 1.15x of ideal)",
             f"{'processors':>10}{'last done s':>12}{'ideal s':>8}{'ratio':>7}{'target':>8}{'viol.':>6}"
             f"{'lost':>5}{'dup':>5}{'store ops/event':>16}{'proc MB':>8}"]
    for r in rows:
        lines.append(f"{r['processors']:>10}{r['end_to_end_secs']:>12.1f}{r['ideal_secs']:>8.1f}"
                     f"{r['ratio_to_ideal']:>7.2f}{'met' if r['ratio_to_ideal'] <= 1.15 else 'MISSED':>8}"
                     f"{r['order_violations'] + r['overlap_violations']:>6}{r['lost']:>5}{r['duplicates']:>5}"
                     f"{r['store_ops_per_event']:>16.2f}{r['processor_peak_rss_mb']:>8.1f}")
    for r in rows:
        split = ", ".join(f"{op} {v:.2f}" for op, v in r["store_ops_per_event_by_operation"].items())
        lines.append(f"  {r['processors']} processor(s), store operations per processed event: {split}")
    return lines


def takeover_lines(t):
    lines = ["Takeover (3 processors delivering to a sink that holds each event 5-6 s; one SIGKILLed "
             "while events flow; LEASE_MS 10000)",
             f"{'run':>4}{'buckets':>8}{'in hand':>8}{'waiting':>8}{'first resumed s':>16}{'all resumed s':>14}"]
    for r in t["runs"]:
        lines.append(f"{r['run']:>4}{r['victim_buckets']:>8}{r['events_in_hand']:>8}"
                     f"{r['victim_patients_waiting']:>8}{fmt(r['first_resumed_s'], '.2f'):>16}"
                     f"{fmt(r['all_resumed_s'], '.2f'):>14}")
    lines.append(f"  first of its patients resumed: p50 {fmt(t['first_resumed_p50_s'], '.2f')} s, max "
                 f"{fmt(t['first_resumed_max_s'], '.2f')} s; all of them: p50 {fmt(t['all_resumed_p50_s'], '.2f')} s, "
                 f"max {fmt(t['all_resumed_max_s'], '.2f')} s")
    return lines


def latency_lines(a):
    s, c = a["sink"], a["claim"]
    lines = [f"Accept to start on an idle fleet (3 processors, {a['accepted']} single events "
             f"{a['gap_ms']} ms apart; target p99 under 200 ms)",
             f"  202 at the client -> delivery at the sink: p50 {fmt(s['p50_ms'])} ms, p99 {fmt(s['p99_ms'])} ms, "
             f"max {fmt(s['max_ms'])} ms ({s['n']} started): "
             f"{'met' if s['p99_ms'] is not None and s['p99_ms'] < 200 else 'MISSED'}",
             f"  acceptedAt -> claim.at (stored times): p50 {fmt(c['p50_ms'])} ms, p99 {fmt(c['p99_ms'])} ms, "
             f"max {fmt(c['max_ms'])} ms"]
    for path, v in a["by_path"].items():
        lines.append(f"  owner {path}: {v['n']} events, p50 {fmt(v['p50_ms'])} ms, p99 {fmt(v['p99_ms'])} ms")
    return lines


def memory_lines(m):
    lines = [f"Memory (wrk c=64, nothing scraping /metrics; processor {m['processor']})",
             f"{'accepted':>10}{'after s':>8}{'ingest MB':>10}{'processor MB':>13}{'processed':>10}{'db MB':>7}"]
    lines.append(f"{'idle':>10}{'':>8}{m['idle']['ingest_rss_mb']:>10.1f}{fmt(m['idle']['processor_rss_mb']):>13}"
                 f"{'':>10}{m['idle']['db_rss_mb']:>7.0f}")
    for p in m["points"]:
        lines.append(f"{p['accepted']:>10,}{p['after_s']:>8.0f}{p['ingest_rss_mb']:>10.1f}"
                     f"{fmt(p['processor_rss_mb']):>13}{p['processed']:>10,}{p['db_rss_mb']:>7.0f}")
    g = m.get("growth")
    if g:
        lines.append("  growth from the first to the last point: " + ", ".join(
            f"{n} {v:+.1f}% ({'met' if v <= 10 else 'MISSED'}: target within 10%)" for n, v in g.items()))
    lb = m["large_bodies"]
    lines.append(f"  {lb['bodies']} bodies of {lb['body_bytes']:,} bytes, {lb['concurrency']} concurrent, processor "
                 f"stopped: {lb['statuses']} in {lb['seconds']:.1f} s; ingest RSS {lb['ingest_rss_before_mb']:.1f} MB "
                 f"before, {lb['ingest_rss_max_sampled_mb']:.1f} MB highest sampled (peak {lb['ingest_peak_rss_mb']:.1f}), "
                 f"{lb['ingest_rss_after_mb']:.1f} MB after")
    return lines


def k6_lines(runs):
    lines = ["k6 (tests/load/k6-events.js, its defaults: ramp to 17/s, hold 1 min, ramp to 200/s, hold 1 min; "
             "thresholds: failed < 1%, p95 < 100 ms, checks > 99%)",
             f"{'processing':<14}{'verdict':>9}{'p95 ms':>8}{'p90 ms':>8}{'max ms':>8}{'failed %':>9}"
             f"{'iterations':>11}{'dropped':>8}"]
    for r in runs:
        lines.append(f"{r['processing']:<14}{'passed' if r['thresholds_passed'] else 'FAILED':>9}"
                     f"{fmt(r['p95_ms']):>8}{fmt(r['p90_ms']):>8}{fmt(r['max_ms'], '.0f'):>8}"
                     f"{r['failed_rate'] * 100:>9.2f}{r['iterations']:>11}{r['dropped_iterations']:>8}")
    return lines


def load_lines(log):
    lines = [f"Machine load per measurement (waits while the 1-minute load average is above {MAX_LOAD}; "
             f"'other CPU' is what processes other than the benchmark's used, of {100 * os.cpu_count()}%)"]
    for e in log:
        lines.append(f"  {e['label']:<44} load {e['load_at_start']:>5.2f} at start"
                     f"{' (gave up waiting)' if e['started_busy_anyway'] else ''}"
                     f", waited {e['waited_s']:>4} s, other CPU {e['other_cpu_pct']:>5.1f}%")
    return lines


def table(results):
    lines = []
    if "ingest" in results:
        lines += ingest_lines(results)
    if "end_to_end" in results:
        lines += end_to_end_lines(results)
    if "footprint" in results or "sleeping_lanes" in results:
        lines += footprint_lines(results)
    if "side_by_side" in results:
        lines += side_by_side_lines(results["side_by_side"]) + [""]
    if "fleet" in results:
        lines += fleet_lines(results["fleet"]) + [""]
    if "takeover" in results:
        lines += takeover_lines(results["takeover"]) + [""]
    if "accept_to_start" in results:
        lines += latency_lines(results["accept_to_start"]) + [""]
    if "memory" in results:
        lines += memory_lines(results["memory"]) + [""]
    if "k6" in results:
        lines += k6_lines(results["k6"]) + [""]
    if "burst" in results:
        b = results["burst"]["settings"]
        lines += open_loop_table(f"Burst (open loop, {b['rate']:.0f} events/s for {b['seconds']} s, "
                                 f"{b['patients']:,} patients, per {b['interval_secs']} s)",
                                 results["burst"]) + [""]
    if "soak" in results:
        o = results["soak"]["settings"]
        lines += open_loop_table(f"Soak (open loop, {o['rate']:.0f} events/s for {o['seconds']} s, "
                                 f"{o['patients']:,} patients, per {o['interval_secs']} s)",
                                 results["soak"])
        lines += soak_target_lines(results["soak"]["targets"]) + [""]
    if results.get("load"):
        lines += load_lines(results["load"]) + [""]
    return "\n".join(lines).rstrip("\n")


def machine():
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    total = next(int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines()
                 if l.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(total / 1024 / 1024, 1),
            "kernel": platform.release(),
            "db": f"secantusd-rs (SecantusDB compiled server), --sync-on-commit, --cache-size {MONGO_CACHE}"}


def main():
    unknown = [s for s in SECTIONS if s not in ALL_SECTIONS]
    if unknown:
        sys.exit(f"BENCH_SECTIONS: unknown {', '.join(unknown)} (known: {', '.join(ALL_SECTIONS)})")
    if pymongo is None:
        sys.exit("pymongo is missing: run through scripts/bench.sh (make bench), which installs it")
    OUT.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "sections": SECTIONS,
               "settings": {"wrk_seconds": WRK_SECONDS, "events_per_patient": EVENTS_PER_PATIENT,
                            "max_load": MAX_LOAD},
               "load": LOAD_LOG}
    if "ingest" in SECTIONS:
        print("ingest", flush=True)
        rows_down, idle, peak_down = bench_ingest(with_processor=False)
        rows_up, idle_up, peak_up = bench_ingest(with_processor=True)
        results["ingest"] = rows_down + rows_up
    if "end_to_end" in SECTIONS:
        print("end to end", flush=True)
        results["end_to_end"] = [bench_end_to_end(p, EVENTS_PER_PATIENT) for p in SCALE_PATIENTS]
    if "sleeping_lanes" in SECTIONS:
        print("sleeping lanes", flush=True)
        results["sleeping_lanes"] = bench_sleeping_lanes()
    if "ingest" in results and "end_to_end" in results:
        results["footprint"] = {
            "ingest_idle_rss_mb": idle["ingest_rss_mb"],
            "processor_idle_rss_mb": idle_up["processor_rss_mb"],
            "ingest_peak_rss_mb": max([peak_down["ingest_peak_rss_mb"], peak_up["ingest_peak_rss_mb"]]
                                      + [r["ingest_peak_rss_mb"] for r in results["end_to_end"]]),
            "processor_peak_rss_mb": max(r["processor_peak_rss_mb"] for r in results["end_to_end"]),
        }
    for section, title, bench in [
        ("side_by_side", "side by side with the original", bench_side_by_side),
        ("fleet", "fleet", bench_fleet),
        ("takeover", "takeover", bench_takeover),
        ("accept_to_start", "accept to start", bench_accept_to_start),
        ("memory", "memory", bench_memory),
        ("k6", "k6", bench_k6),
    ]:
        if section in SECTIONS:
            print(title, flush=True)
            results[section] = bench()
    if "burst" in SECTIONS:
        print(f"burst: {BURST_RATE:.0f} events/s for {BURST_SECONDS} s", flush=True)
        print("  " + INTERVAL_HEADER, flush=True)
        results["burst"] = bench_open_loop("burst", BURST_RATE, BURST_SECONDS, SOAK_PATIENTS, BURST_INTERVAL)
    if "soak" in SECTIONS:
        print(f"soak: {SOAK_RATE:.0f} events/s for {SOAK_SECONDS} s over {SOAK_PATIENTS} patients", flush=True)
        print("  " + INTERVAL_HEADER, flush=True)
        results["soak"] = bench_open_loop("soak", SOAK_RATE, SOAK_SECONDS, SOAK_PATIENTS, SOAK_INTERVAL)
        results["soak"]["targets"] = soak_targets(results["soak"])
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = table(results)
    print()
    print(text)
    (OUT / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (OUT / "results.txt").write_text(text + "\n")
    written = [OUT / "results.json", OUT / "results.txt"]
    (ROOT / "docs").mkdir(exist_ok=True)
    if "ingest" in results and "end_to_end" in results and plot(results, OUT / "bench.png"):
        shutil.copy(OUT / "bench.png", ROOT / "docs" / "bench.png")
        written.append(OUT / "bench.png")
    if "soak" in results and plot_soak(results["soak"], OUT / "soak.png"):
        shutil.copy(OUT / "soak.png", ROOT / "docs" / "soak.png")
        written.append(OUT / "soak.png")
    print(f"\nwrote {', '.join(str(w) for w in written)}")


if __name__ == "__main__":
    main()
