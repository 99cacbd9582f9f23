"""ingest: wrk at several concurrencies, with the processor down (intake
alone) and working through what is accepted (the whole system sharing the
machine); accepts/s, latency, errors, and the CPU split from /proc."""

import time

from ..harness import stamp


def measure(settings, harness, with_processor):
    label = "processor working" if with_processor else "processor down"
    db = harness.database(f"ingest-{int(with_processor)}")
    stack = harness.stack(db, f"bench_ingest_{int(with_processor)}_{stamp()}", processors=int(with_processor))
    time.sleep(2)
    idle = {"ingest_rss_mb": stack.ingest.rss_mb()}
    if stack.processor:
        idle["processor_rss_mb"] = stack.processor.rss_mb()
    rows = []
    for run, concurrency in enumerate(settings.concurrencies, start=1):
        procs = (stack.ingest, db.proc, stack.processor)
        with harness.measurement(f"ingest {label} c={concurrency}") as m:
            before = [p.cpu() if p else 0 for p in procs]
            result = harness.run_wrk(stack.url, concurrency, run=run)
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


def run(settings, harness):
    print("ingest", flush=True)
    rows_down, idle_down, peak_down = measure(settings, harness, with_processor=False)
    rows_up, idle_up, peak_up = measure(settings, harness, with_processor=True)
    # For the footprint table (with the end-to-end runs' peaks).
    harness.ingest_footprint = {
        "ingest_idle_rss_mb": idle_down["ingest_rss_mb"],
        "processor_idle_rss_mb": idle_up["processor_rss_mb"],
        "ingest_peak_rss_mb": max(peak_down["ingest_peak_rss_mb"], peak_up["ingest_peak_rss_mb"]),
    }
    return rows_down + rows_up


def render(rows):
    lines = []
    lines.append("Ingest (wrk, durable accepts)")
    lines.append(f"{'mode':<18}{'conc':>5}{'accepts/s':>11}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}"
                 f"{'max ms':>8}{'errors':>7}{'cpu% ing/db/proc':>20}")
    for r in rows:
        lines.append(f"{r['mode']:<18}{r['concurrency']:>5}{r['rps']:>11.0f}{r['p50_ms']:>8.1f}"
                     f"{r['p95_ms']:>8.1f}{r['p99_ms']:>8.1f}{r['max_ms']:>8.0f}{r['errors']:>7}"
                     f"{r['ingest_cpu_pct']:>8.0f}/{r['db_cpu_pct']:.0f}/{r['processor_cpu_pct']:.0f}")
    lines.append("")
    return lines
