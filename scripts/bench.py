#!/usr/bin/env python3
"""Benchmarks of the whole system on loopback (run through `make bench`).

Starts SecantusDB's compiled server (secantusd-rs) and the release binaries,
then measures:
  - ingest: durable accepts/s and latency percentiles with wrk at several
    concurrencies, once with the processor down and once with it working;
  - end to end: P patients x E events at the real 5-6 s processing time,
    time to the last outcome against the ideal, order violations;
  - footprint: RSS and CPU time of each process (from /proc);
  - sleeping lanes: processor CPU while 10,000 patients' events sleep;
  - side by side: 5,000 patients x 1 event, 64 senders, next to the original
    NestJS service's figures;
  - burst: an open-loop 10,000 events/s for 30 s, per 5-second interval;
  - soak: an open-loop 1,000 events/s for 10 minutes over 10,000 patients,
    per minute, with RSS and CPU of the database and both services, and
    whether it met its targets.
BENCH_SECTIONS (comma-separated) selects sections; default: all.
Prints tables, writes target/bench/results.json, target/bench/bench.png and
target/bench/soak.png (copied to docs/ for BENCHMARKS.md).
"""

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "target" / "bench"
RELEASE = ROOT / "target" / "release"
WRK_SCRIPT = ROOT / "tests" / "load" / "wrk-events.lua"
CLK_TCK = os.sysconf("SC_CLK_TCK")
API_KEY = "bench-api-key-0123456789"
PROCESSOR_TOKEN = "bench-processor-token-0123456789"
os.environ["API_KEY"] = API_KEY  # read by wrk-events.lua and loadgen

CONCURRENCIES = [int(c) for c in os.environ.get("BENCH_CONCURRENCIES", "1,16,64,256").split(",")]
WRK_SECONDS = int(os.environ.get("BENCH_WRK_SECONDS", "10"))
SCALE_PATIENTS = [int(p) for p in os.environ.get("BENCH_PATIENTS", "100,1000,10000").split(",")]
EVENTS_PER_PATIENT = int(os.environ.get("BENCH_EVENTS", "5"))
ALL_SECTIONS = ["ingest", "end_to_end", "sleeping_lanes", "side_by_side", "burst", "soak"]
SECTIONS = [s.strip() for s in os.environ.get("BENCH_SECTIONS", ",".join(ALL_SECTIONS)).split(",")
            if s.strip()]
SOAK_RATE = float(os.environ.get("BENCH_SOAK_RATE", "1000"))
SOAK_SECONDS = int(os.environ.get("BENCH_SOAK_SECONDS", "600"))
SOAK_PATIENTS = int(os.environ.get("BENCH_SOAK_PATIENTS", "10000"))
BURST_RATE = float(os.environ.get("BENCH_BURST_RATE", "10000"))
BURST_SECONDS = int(os.environ.get("BENCH_BURST_SECONDS", "30"))
SOAK_INTERVAL = 60
BURST_INTERVAL = 5

# The original NestJS service, measured earlier on this same machine (2 cores)
# in the same mode as `side_by_side` (5,000 patients x 1 event, 64 concurrent
# senders, real 5-6 s processing), once on each SecantusDB server. That
# service is not in this repository, so its figures are kept here as
# constants: accepted events/s, POST p99 and the time from the first request
# until every event was processed.
ORIGINAL_NESTJS = [
    {"service": "original (NestJS)", "db": "SecantusDB compiled (secantusd-rs)",
     "accept_rate_per_sec": 267, "post_p99_ms": 912, "end_to_end_secs": 26.0},
    {"service": "original (NestJS)", "db": "SecantusDB Python",
     "accept_rate_per_sec": 227, "post_p99_ms": 812, "end_to_end_secs": 44.3},
]
SIDE_BY_SIDE = {"patients": 5000, "events": 1, "concurrency": 64}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open")


def wait_healthy(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"service on {port} not healthy")


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def memory_kb(pid, key):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class Proc:
    def __init__(self, name, args, env=None, log=None):
        self.name = name
        self.log = open(log or os.devnull, "w")
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

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


class Stack:
    """Ingest and processor on one fresh database."""

    def __init__(self, mongo_base, database, processor=True, processing=None):
        uri = f"{mongo_base}/{database}"
        self.uri = uri
        self.ingest_port = free_port()
        self.processor_port = free_port()
        base = {"PATH": os.environ.get("PATH", ""), "MONGO_URI": uri, "RUST_LOG": "error",
                "LOG_FORMAT": "json", "INGEST_API_KEYS": API_KEY, "PROCESSOR_TOKEN": PROCESSOR_TOKEN,
                # Measure capacity, not the default per-key rate limit.
                "RATE_LIMIT_PER_SEC": "1000000", "RATE_LIMIT_BURST": "1000000"}
        self.processor = None
        if processor:
            env = dict(base, PORT=str(self.processor_port))
            if processing:
                env.update(PROCESSING_MIN_MS=str(processing[0]), PROCESSING_MAX_MS=str(processing[1]))
            self.processor = Proc("processor", [str(RELEASE / "processor")], env,
                                  OUT / f"{database}-processor.log")
            wait_healthy(self.processor_port)
        env = dict(base, PORT=str(self.ingest_port),
                   PROCESSOR_URL=f"http://127.0.0.1:{self.processor_port}")
        self.ingest = Proc("ingest", [str(RELEASE / "ingest")], env, OUT / f"{database}-ingest.log")
        wait_healthy(self.ingest_port)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.ingest_port}"

    def stop(self):
        self.ingest.stop()
        if self.processor:
            self.processor.stop()


def run_wrk(url, concurrency):
    threads = min(2, concurrency)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{WRK_SECONDS}s", "--timeout", "5s",
         "-s", str(WRK_SCRIPT), url],
        capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("WRK_JSON "))
    result = json.loads(line[len("WRK_JSON "):])
    result["errors"] = sum(v for k, v in result.items() if k.startswith("errors_"))
    return result


def bench_ingest(mongo_base, db_proc, with_processor):
    label = "processor working" if with_processor else "processor down"
    stack = Stack(mongo_base, f"bench_ingest_{int(with_processor)}_{int(time.time())}",
                  processor=with_processor)
    time.sleep(2)
    idle = {"ingest_rss_mb": stack.ingest.rss_mb()}
    if stack.processor:
        idle["processor_rss_mb"] = stack.processor.rss_mb()
    rows = []
    for concurrency in CONCURRENCIES:
        before = (stack.ingest.cpu(), db_proc.cpu(), stack.processor.cpu() if stack.processor else 0)
        result = run_wrk(stack.url, concurrency)
        after = (stack.ingest.cpu(), db_proc.cpu(), stack.processor.cpu() if stack.processor else 0)
        accepted = max(result["requests"] - result["errors_status"], 1)
        result.update(
            mode=label, concurrency=concurrency,
            ingest_cpu_s_per_1000=(after[0] - before[0]) * 1000 / accepted,
            db_cpu_s_per_1000=(after[1] - before[1]) * 1000 / accepted,
            processor_cpu_s_per_1000=(after[2] - before[2]) * 1000 / accepted,
            ingest_cpu_pct=(after[0] - before[0]) * 100 / result["seconds"],
            db_cpu_pct=(after[1] - before[1]) * 100 / result["seconds"],
            processor_cpu_pct=(after[2] - before[2]) * 100 / result["seconds"],
        )
        rows.append(result)
        print(f"  ingest ({label}) c={concurrency}: {result['rps']:.0f}/s "
              f"p99 {result['p99_ms']:.1f} ms, errors {result['errors']}", flush=True)
    peak = {"ingest_peak_rss_mb": stack.ingest.peak_mb()}
    stack.stop()
    return rows, idle, peak


def loadgen(command, stack, **flags):
    args = [str(RELEASE / "loadgen"), command, "--url", stack.url, "--mongo", stack.uri]
    for name, value in flags.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def bench_end_to_end(mongo_base, db_proc, patients, events, concurrency=64, quiet=False):
    stack = Stack(mongo_base, f"bench_e2e_{patients}_{int(time.time())}")
    time.sleep(1)
    before = (stack.ingest.cpu(), stack.processor.cpu(), db_proc.cpu())
    out = subprocess.run(
        loadgen("run", stack, patients=patients, events=events, concurrency=concurrency, timeout=600),
        capture_output=True, text=True, check=True).stdout
    after = (stack.ingest.cpu(), stack.processor.cpu(), db_proc.cpu())
    result = json.loads(out)
    processed = max(result["processed"], 1)
    result.update(
        ingest_cpu_s_per_1000_accepted=(after[0] - before[0]) * 1000 / max(result["accepted"], 1),
        processor_cpu_s_per_1000_processed=(after[1] - before[1]) * 1000 / processed,
        db_cpu_s_per_1000_processed=(after[2] - before[2]) * 1000 / processed,
        processor_peak_rss_mb=stack.processor.peak_mb(),
        ingest_peak_rss_mb=stack.ingest.peak_mb(),
    )
    stack.stop()
    if quiet:
        return result
    print(f"  end to end P={patients} E={events}: {result['end_to_end_secs']:.1f} s "
          f"({result['ratio_to_ideal']:.2f}x ideal), {result['events_per_min']:.0f} events/min, "
          f"order violations {result['order_violations']}, lost {result['lost']}, "
          f"duplicates {result['duplicates']}", flush=True)
    return result


def bench_sleeping_lanes(mongo_base, patients=10_000):
    """Processor CPU while `patients` lanes each sleep in a 30 s event."""
    stack = Stack(mongo_base, f"bench_lanes_{int(time.time())}", processing=(30_000, 30_000))
    proc = subprocess.Popen(
        loadgen("run", stack, patients=patients, events=1, concurrency=64, timeout=1),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.wait()
    # Wait until every event is claimed (all lanes asleep in their 30 s event).
    time.sleep(4)
    window = 5.0
    before = stack.processor.cpu()
    rss = stack.processor.rss_mb()
    time.sleep(window)
    cpu = stack.processor.cpu() - before
    result = {"patients": patients, "window_s": window, "processor_cpu_s": cpu,
              "processor_cpu_pct": cpu * 100 / window, "processor_rss_mb": rss}
    stack.stop()
    print(f"  {patients} sleeping lanes: processor CPU {result['processor_cpu_pct']:.2f}% "
          f"RSS {rss:.1f} MB", flush=True)
    return result


def bench_side_by_side(mongo_base, db_proc):
    """This system in the mode the original NestJS service was measured in."""
    p, e, c = SIDE_BY_SIDE["patients"], SIDE_BY_SIDE["events"], SIDE_BY_SIDE["concurrency"]
    ours = bench_end_to_end(mongo_base, db_proc, p, e, concurrency=c, quiet=True)
    print(f"  side by side P={p} E={e} C={c}: {ours['accept_rate_per_sec']:.0f} accepted/s, "
          f"POST p50 {ours['post_p50_ms']:.1f} ms p99 {ours['post_p99_ms']:.1f} ms "
          f"max {ours['post_max_ms']:.0f} ms, all processed after {ours['end_to_end_secs']:.1f} s "
          f"(original on secantusd-rs: {ORIGINAL_NESTJS[0]['accept_rate_per_sec']}/s, "
          f"p99 {ORIGINAL_NESTJS[0]['post_p99_ms']} ms, {ORIGINAL_NESTJS[0]['end_to_end_secs']} s)",
          flush=True)
    return {"settings": SIDE_BY_SIDE, "ours": ours, "original": ORIGINAL_NESTJS}


PROCESS_NAMES = ("db", "ingest", "processor")


def bench_open_loop(mongo_base, db_proc, mode, rate, seconds, patients, interval):
    """Runs `loadgen soak|burst` on a fresh stack at the real processing time;
    at every interval line it prints, samples RSS and CPU of the database and
    both services and adds them to that interval's row."""
    stack = Stack(mongo_base, f"bench_{mode}_{int(time.time())}")
    time.sleep(1)
    procs = {"db": db_proc, "ingest": stack.ingest, "processor": stack.processor}
    args = loadgen(mode, stack, rate=rate, seconds=seconds, patients=patients, interval=interval)
    rows, summary = [], None
    with open(OUT / f"{mode}-loadgen.log", "w") as log:
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
                last_at = now
                rows.append(row)
                print("  " + interval_line(row), flush=True)
            elif row["kind"] == "summary":
                summary = row
        if proc.wait() != 0 or summary is None:
            stack.stop()
            raise RuntimeError(f"loadgen {mode} failed (see {OUT / f'{mode}-loadgen.log'})")
    summary["peak_rss_mb"] = {"ingest": stack.ingest.peak_mb(), "processor": stack.processor.peak_mb(),
                              "db": db_proc.peak_mb()}
    stack.stop()
    print(f"  {mode}: sent {summary['sent']}, accepted {summary['accepted']}, errors {summary['errors']}, "
          f"dropped by the client {summary['dropped_by_client']}; drained in {summary['drain_secs']:.1f} s "
          f"({'complete' if summary['drained'] else 'NOT complete'}); {lost_text(summary)}, "
          f"duplicated {summary['duplicated']}; driver CPU {summary['driver_cpu_pct_sending']:.0f}% "
          f"of a core", flush=True)
    return {"settings": {"rate": rate, "seconds": seconds, "patients": patients, "interval_secs": interval},
            "intervals": rows, "summary": summary}


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


def side_by_side_lines(sbs):
    o = sbs["ours"]
    st = sbs["settings"]
    lines = [f"Side by side with the original ({st['patients']:,} patients x {st['events']} event, "
             f"{st['concurrency']} concurrent senders, real 5-6 s processing)",
             f"{'service':<20}{'database':<36}{'accepted/s':>11}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}"
             f"{'all processed after':>21}"]
    lines.append(f"{'this (Rust)':<20}{'SecantusDB compiled (secantusd-rs)':<36}"
                 f"{o['accept_rate_per_sec']:>11.0f}{o['post_p50_ms']:>8.1f}{o['post_p99_ms']:>8.1f}"
                 f"{o['post_max_ms']:>8.0f}{o['end_to_end_secs']:>19.1f} s")
    for r in sbs["original"]:
        lines.append(f"{r['service']:<20}{r['db']:<36}{r['accept_rate_per_sec']:>11.0f}{'-':>8}"
                     f"{r['post_p99_ms']:>8.0f}{'-':>8}{r['end_to_end_secs']:>19.1f} s")
    lines.append(f"  ours: accepted {o['accepted']}, POST errors {o['post_errors']}, lost {o['lost']}, "
                 f"duplicates {o['duplicates']}; driver CPU {o['driver_cpu_pct_accepting']:.0f}% "
                 f"of a core while sending")
    return lines


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


def secantusd():
    """SecantusDB's compiled server: the project's own install first, then PATH."""
    local = ROOT / ".tools" / "secantus-rs" / "bin" / "secantusd-rs"
    if local.exists():
        return str(local)
    return shutil.which("secantusd-rs") or os.path.expanduser("~/.cargo/bin/secantusd-rs")


def machine():
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    total = next(int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines()
                 if l.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(total / 1024 / 1024, 1),
            "kernel": platform.release(), "db": "secantusd-rs (SecantusDB compiled server)"}


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
    return "\n".join(lines).rstrip("\n")


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


def main():
    unknown = [s for s in SECTIONS if s not in ALL_SECTIONS]
    if unknown:
        sys.exit(f"BENCH_SECTIONS: unknown {', '.join(unknown)} (known: {', '.join(ALL_SECTIONS)})")
    OUT.mkdir(parents=True, exist_ok=True)
    storage = Path(tempfile.mkdtemp(prefix="bench-db-", dir=OUT))
    db_port = free_port()
    db = Proc("secantusd-rs", [secantusd(), "--host", "127.0.0.1", "--port", str(db_port), "--storage-path", str(storage),
                               "--cache-size", "256M", "--log-file-max", "16MB"],
              log=OUT / "secantusd-rs.log")
    try:
        wait_port(db_port)
        mongo = f"mongodb://127.0.0.1:{db_port}"
        results = {"machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "sections": SECTIONS,
                   "settings": {"wrk_seconds": WRK_SECONDS, "events_per_patient": EVENTS_PER_PATIENT}}
        if "ingest" in SECTIONS:
            print("ingest", flush=True)
            rows_down, idle, peak_down = bench_ingest(mongo, db, with_processor=False)
            rows_up, idle_up, peak_up = bench_ingest(mongo, db, with_processor=True)
            results["ingest"] = rows_down + rows_up
        if "end_to_end" in SECTIONS:
            print("end to end", flush=True)
            results["end_to_end"] = [bench_end_to_end(mongo, db, p, EVENTS_PER_PATIENT)
                                     for p in SCALE_PATIENTS]
        if "sleeping_lanes" in SECTIONS:
            print("sleeping lanes", flush=True)
            results["sleeping_lanes"] = bench_sleeping_lanes(mongo)
        if "ingest" in results and "end_to_end" in results:
            results["footprint"] = {
                "ingest_idle_rss_mb": idle["ingest_rss_mb"],
                "processor_idle_rss_mb": idle_up["processor_rss_mb"],
                "ingest_peak_rss_mb": max([peak_down["ingest_peak_rss_mb"], peak_up["ingest_peak_rss_mb"]]
                                          + [r["ingest_peak_rss_mb"] for r in results["end_to_end"]]),
                "processor_peak_rss_mb": max(r["processor_peak_rss_mb"] for r in results["end_to_end"]),
            }
        if "side_by_side" in SECTIONS:
            print("side by side with the original", flush=True)
            results["side_by_side"] = bench_side_by_side(mongo, db)
        if "burst" in SECTIONS:
            print(f"burst: {BURST_RATE:.0f} events/s for {BURST_SECONDS} s", flush=True)
            print("  " + INTERVAL_HEADER, flush=True)
            results["burst"] = bench_open_loop(mongo, db, "burst", BURST_RATE, BURST_SECONDS,
                                               SOAK_PATIENTS, BURST_INTERVAL)
        if "soak" in SECTIONS:
            print(f"soak: {SOAK_RATE:.0f} events/s for {SOAK_SECONDS} s over {SOAK_PATIENTS} patients",
                  flush=True)
            print("  " + INTERVAL_HEADER, flush=True)
            results["soak"] = bench_open_loop(mongo, db, "soak", SOAK_RATE, SOAK_SECONDS, SOAK_PATIENTS,
                                              SOAK_INTERVAL)
            results["soak"]["targets"] = soak_targets(results["soak"])
        text = table(results)
        print()
        print(text)
        (OUT / "results.json").write_text(json.dumps(results, indent=2))
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
    finally:
        db.stop()
        shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    main()
