"""processing: what processing costs with zero-length work, in one run on
one database (the compiled server, as `make run` starts it).

1. Intake alone (no processor): wrk c=64 for BENCH_PROCESSING_FILL_SECONDS;
   the accepted/s is the maximum intake of this run.
2. One processor with PROCESSING_MIN_MS=MAX_MS=0 drains those events; its
   sustained processed/s (between 10% and 90% of the drain) against that
   intake, and the processor's database round trips per processed event
   (`store_operation_seconds_count`, by operation) and its writes among them
   (commits: a batched update or insert is one).
"""

import time

from ..harness import stamp
from ..stacks import scrape

# Operations of the processor that read (by the verb of their label); every
# other one writes: one commit, however many documents it carries.
READS = ("reading", "finding", "scanning", "listing", "looking", "counting", "aggregating", "ping")


def processor_ops(stack):
    ops = {}
    for port in stack._processor_metrics:
        for (name, labels), value in scrape(port).items():
            if name == "store_operation_seconds_count":
                op = labels.split('operation="', 1)[1].split('"', 1)[0] if 'operation="' in labels else ""
                ops[op] = ops.get(op, 0) + value
    return ops


def run(settings, harness):
    print("processing (zero-length work)", flush=True)
    db = harness.database("processing")
    name = f"bench_processing_{stamp()}"
    fill = harness.stack(db, name, processors=0)
    time.sleep(1)
    with harness.measurement("processing: intake alone") as m1:
        wrk = harness.run_wrk(fill.url, 64, seconds=settings.processing_fill_seconds, run=1)
    fill.stop()
    queued = db.client()[name]["queued_events"]
    processed = db.client()[name]["processed_events"]
    accepted = queued.count_documents({})
    # What was stored, not what wrk counted (a duplicate is answered too).
    intake_rate = accepted / wrk["seconds"]
    print(f"  intake alone: {accepted:,} accepted, {intake_rate:.0f}/s, p99 {wrk['p99_ms']:.1f} ms, "
          f"{wrk['errors']} errors", flush=True)

    with harness.measurement("processing: drain with zero-length work") as m2:
        drain = harness.stack(db, name, processors=1, processing=(0, 0))
        before = processor_ops(drain)
        cpu_before = (db.proc.cpu(), drain.processor.cpu())
        started = time.monotonic()
        marks = []  # (seconds, processed)
        deadline = started + 1800
        done = 0
        while time.monotonic() < deadline:
            done = processed.estimated_document_count()
            marks.append((time.monotonic() - started, done))
            if done >= accepted:
                break
            time.sleep(0.5)
        took = time.monotonic() - started
        after = processor_ops(drain)
        cpu = {"database": (db.proc.cpu() - cpu_before[0]) / took * 100,
               "processor": (drain.processor.cpu() - cpu_before[1]) / took * 100}
        drain.stop()
    lo = next((t, n) for t, n in marks if n >= accepted * 0.1)
    hi = next((t, n) for t, n in marks if n >= accepted * 0.9)
    sustained = (hi[1] - lo[1]) / (hi[0] - lo[0]) if hi[0] > lo[0] else None
    ops = {op: after.get(op, 0) - before.get(op, 0) for op in after}
    ops = {op: n for op, n in ops.items() if n > 0}
    trips = sum(ops.values()) / max(done, 1)
    commits = sum(n for op, n in ops.items() if not op.startswith(READS)) / max(done, 1)
    db.stop()
    result = {"accepted": accepted, "intake_per_s": intake_rate, "intake_p99_ms": wrk["p99_ms"],
              "processed": done, "drain_s": took, "processed_per_s": sustained,
              "ratio": sustained / intake_rate if sustained and intake_rate else None,
              "round_trips_per_processed_event": trips,
              "store_commits_per_processed_event": commits,
              "operations_per_event": {op: n / max(done, 1) for op, n in sorted(ops.items())},
              "drain_cpu_pct": cpu,
              "load": [m1.entry, m2.entry]}
    for line in render(result):
        print("  " + line, flush=True)
    return result


def render(m):
    ratio = m["ratio"]
    lines = [f"Processing with zero-length work (one processor, compiled server): intake alone "
             f"{m['intake_per_s']:.0f}/s ({m['accepted']:,} events), then drained at "
             f"{m['processed_per_s'] or 0:.0f}/s sustained ({m['processed']:,} in {m['drain_s']:.1f} s): "
             f"ratio {ratio or 0:.2f} ({'met' if ratio and ratio >= 0.5 else 'MISSED'}: target at least 0.5)",
             f"  database round trips per processed event {m['round_trips_per_processed_event']:.2f} "
             f"({'met' if m['round_trips_per_processed_event'] <= 2 else 'MISSED'}: target at most 2), "
             f"store_commits_per_processed_event {m['store_commits_per_processed_event']:.2f}",
             "  by operation: " + ", ".join(f"{op} {n:.2f}" for op, n in m["operations_per_event"].items()),
             "  CPU during the drain (of 200%): " + ", ".join(f"{k} {v:.0f}%" for k, v in m["drain_cpu_pct"].items())]
    return lines
