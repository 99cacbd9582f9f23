#!/usr/bin/env python3
"""Benchmarks of the whole system on loopback (run through `make bench`).

Starts SecantusDB's compiled server (secantusd-rs) and the release binaries,
then measures:
  - ingest: durable accepts/s and latency percentiles with wrk at several
    concurrencies, once with the processor down and once with it working;
  - end to end: P patients x E events at the real 5-6 s processing time,
    time to the last outcome against the ideal, order violations;
  - footprint: RSS and CPU time of each process (from /proc);
  - sleeping lanes: processor CPU while 10,000 patients' events sleep.
Prints a table, writes target/bench/results.json and target/bench/bench.png
(also copied to docs/bench.png for BENCHMARKS.md).
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


def bench_end_to_end(mongo_base, db_proc, patients, events, concurrency=64):
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
    lines.append("Ingest (wrk, durable accepts)")
    lines.append(f"{'mode':<18}{'conc':>5}{'accepts/s':>11}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}"
                 f"{'max ms':>8}{'errors':>7}{'cpu% ing/db/proc':>20}")
    for r in results["ingest"]:
        lines.append(f"{r['mode']:<18}{r['concurrency']:>5}{r['rps']:>11.0f}{r['p50_ms']:>8.1f}"
                     f"{r['p95_ms']:>8.1f}{r['p99_ms']:>8.1f}{r['max_ms']:>8.0f}{r['errors']:>7}"
                     f"{r['ingest_cpu_pct']:>8.0f}/{r['db_cpu_pct']:.0f}/{r['processor_cpu_pct']:.0f}")
    lines.append("")
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
    f = results["footprint"]
    lines.append("Footprint")
    lines.append(f"  idle RSS: ingest {f['ingest_idle_rss_mb']:.1f} MB, processor {f['processor_idle_rss_mb']:.1f} MB")
    lines.append(f"  peak RSS: ingest {f['ingest_peak_rss_mb']:.1f} MB, processor {f['processor_peak_rss_mb']:.1f} MB")
    s = results["sleeping_lanes"]
    lines.append(f"  {s['patients']} sleeping lanes: processor {s['processor_cpu_pct']:.2f}% CPU "
                 f"over {s['window_s']:.0f} s, RSS {s['processor_rss_mb']:.1f} MB")
    return "\n".join(lines)


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
    OUT.mkdir(parents=True, exist_ok=True)
    storage = Path(tempfile.mkdtemp(prefix="bench-db-", dir=OUT))
    db_port = free_port()
    db = Proc("secantusd-rs", [shutil.which("secantusd-rs") or os.path.expanduser("~/.cargo/bin/secantusd-rs"),
                               "--host", "127.0.0.1", "--port", str(db_port), "--storage-path", str(storage),
                               "--cache-size", "256M", "--log-file-max", "16MB"],
              log=OUT / "secantusd-rs.log")
    try:
        wait_port(db_port)
        mongo = f"mongodb://127.0.0.1:{db_port}"
        results = {"machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "settings": {"wrk_seconds": WRK_SECONDS, "events_per_patient": EVENTS_PER_PATIENT}}
        print("ingest", flush=True)
        rows_down, idle, peak_down = bench_ingest(mongo, db, with_processor=False)
        rows_up, idle_up, peak_up = bench_ingest(mongo, db, with_processor=True)
        results["ingest"] = rows_down + rows_up
        print("end to end", flush=True)
        results["end_to_end"] = [bench_end_to_end(mongo, db, p, EVENTS_PER_PATIENT) for p in SCALE_PATIENTS]
        print("sleeping lanes", flush=True)
        results["sleeping_lanes"] = bench_sleeping_lanes(mongo)
        results["footprint"] = {
            "ingest_idle_rss_mb": idle["ingest_rss_mb"],
            "processor_idle_rss_mb": idle_up["processor_rss_mb"],
            "ingest_peak_rss_mb": max([peak_down["ingest_peak_rss_mb"], peak_up["ingest_peak_rss_mb"]]
                                      + [r["ingest_peak_rss_mb"] for r in results["end_to_end"]]),
            "processor_peak_rss_mb": max(r["processor_peak_rss_mb"] for r in results["end_to_end"]),
        }
        text = table(results)
        print()
        print(text)
        (OUT / "results.json").write_text(json.dumps(results, indent=2))
        (OUT / "results.txt").write_text(text + "\n")
        if plot(results, OUT / "bench.png"):
            (ROOT / "docs").mkdir(exist_ok=True)
            shutil.copy(OUT / "bench.png", ROOT / "docs" / "bench.png")
        print(f"\nwrote {OUT / 'results.json'}, {OUT / 'results.txt'}, {OUT / 'bench.png'}")
    finally:
        db.stop()
        shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    main()
