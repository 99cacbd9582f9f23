"""fleet: P x E at the real timing with 1 and 3 processors; store
operations per processed event, from every service's /metrics before and
after."""

import time

from ..harness import stamp
from .end_to_end import loadgen_run


def run(settings, harness):
    print("fleet", flush=True)
    rows = []
    for n in settings.fleet_sizes:
        db = harness.database(f"fleet-{n}")
        stack = harness.stack(db, f"bench_fleet_{n}_{stamp()}", processors=n)
        balanced_after = stack.wait_balanced(n)
        time.sleep(1)
        with harness.measurement(f"fleet {n} processor(s)") as m:
            before = stack.store_operations()
            result = loadgen_run(harness, stack, settings.fleet_patients, settings.fleet_events)
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


def render(rows):
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
