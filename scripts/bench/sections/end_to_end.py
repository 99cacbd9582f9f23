"""end_to_end: `loadgen run`, P patients x E events at the real 5-6 s
processing: time to the last outcome against the ideal, events/min, lost,
duplicated, out-of-order; CPU per 1,000 events and peak RSS per process."""

import json
import subprocess
import time

from ..harness import stamp


def loadgen_run(harness, stack, patients, events, concurrency=64, timeout=900):
    """`loadgen run` against `stack`, with the CPU each process used."""
    procs = [stack.ingest, stack.db.proc] + stack.processors
    before = [p.cpu() for p in procs]
    out = subprocess.run(
        harness.loadgen("run", stack, patients=patients, events=events, concurrency=concurrency, timeout=timeout),
        capture_output=True, text=True, check=True, env=harness.env()).stdout
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


def measure(harness, patients, events):
    db = harness.database(f"e2e-{patients}")
    stack = harness.stack(db, f"bench_e2e_{patients}_{stamp()}")
    time.sleep(1)
    with harness.measurement(f"end to end {patients} x {events}") as m:
        result = loadgen_run(harness, stack, patients, events)
    result["load"] = m.entry
    stack.stop()
    db.stop()
    print(f"  end to end P={patients} E={events}: {result['end_to_end_secs']:.1f} s "
          f"({result['ratio_to_ideal']:.2f}x ideal), {result['events_per_min']:.0f} events/min, "
          f"order violations {result['order_violations']}, lost {result['lost']}, "
          f"duplicates {result['duplicates']}", flush=True)
    return result


def run(settings, harness):
    print("end to end", flush=True)
    return [measure(harness, p, settings.events_per_patient) for p in settings.scale_patients]


def render(rows):
    lines = []
    lines.append("End to end (real 5-6 s processing, 64 concurrent requests)")
    lines.append(f"{'patients':>9}{'events':>8}{'accept s':>9}{'last done s':>12}{'ideal s':>8}"
                 f"{'ratio':>7}{'events/min':>11}{'order viol.':>12}{'lost':>5}{'dup':>5}"
                 f"{'proc MB':>8}{'cpu s/1k proc':>14}")
    for r in rows:
        lines.append(f"{r['patients']:>9}{r['accepted']:>8}{r['accept_secs']:>9.1f}"
                     f"{r['end_to_end_secs']:>12.1f}{r['ideal_secs']:>8.1f}{r['ratio_to_ideal']:>7.2f}"
                     f"{r['events_per_min']:>11.0f}{r['order_violations'] + r['overlap_violations']:>12}"
                     f"{r['lost']:>5}{r['duplicates']:>5}{r['processor_peak_rss_mb']:>8.1f}"
                     f"{r['processor_cpu_s_per_1000_processed']:>14.2f}")
    lines.append("")
    return lines
