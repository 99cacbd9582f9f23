"""memory: RSS of both services after BENCH_MEMORY_EVENTS accepted events
(wrk, c=64), nothing scraping /metrics; then ingest's RSS under 1 MiB
bodies (a fresh database on the same server, no processor)."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ..client import event_body, post_event
from ..harness import stamp
from ..text import fmt


def run(settings, harness):
    print("memory", flush=True)
    db = harness.database("memory")
    fast = settings.memory_processor == "fast"
    stack = harness.stack(db, f"bench_memory_{stamp()}", processors=1 if fast else 0, processing=(0, 1))
    queued = stack.mongo()["queued_events"]
    processed = stack.mongo()["processed_events"]
    time.sleep(2)
    idle = {"ingest_rss_mb": stack.ingest.rss_mb(),
            "processor_rss_mb": stack.processor.rss_mb() if fast else None, "db_rss_mb": db.proc.rss_mb()}
    points = []
    started = time.monotonic()
    run = 0
    with harness.measurement(f"memory: {settings.memory_events[-1]:,} accepted events") as m:
        for target in settings.memory_events:
            while True:
                count = queued.estimated_document_count()
                if count >= target:
                    break
                elapsed = max(time.monotonic() - started, 1)
                rate = max(count / elapsed, 500)
                seconds = int(min(30, max(2, (target - count) / rate)))
                run += 1
                harness.run_wrk(stack.url, 64, seconds=seconds, run=run)
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
    result["large_bodies"] = large_bodies(settings, harness, db)
    db.stop()
    return result


def large_bodies(settings, harness, db):
    """Ingest's RSS while LARGE_CONCURRENCY clients post 1 MiB bodies."""
    big = harness.stack(db, f"bench_large_{stamp()}", processors=0)
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
    with harness.measurement("memory: 1 MiB bodies") as m2:
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.monotonic()
        with ThreadPoolExecutor(settings.large_concurrency) as pool:
            for status, _, _ in pool.map(one, range(settings.large_bodies)):
                statuses[str(status)] = statuses.get(str(status), 0) + 1
        took = time.monotonic() - t0
        stop.set()
        sampler.join()
        time.sleep(2)
    lb = {"bodies": settings.large_bodies, "concurrency": settings.large_concurrency, "body_bytes": size,
          "statuses": statuses, "seconds": took, "ingest_rss_before_mb": before,
          "ingest_rss_max_sampled_mb": max(samples, default=before),
          "ingest_peak_rss_mb": big.ingest.peak_mb(),
          "ingest_rss_after_mb": big.ingest.rss_mb(), "load": m2.entry}
    big.stop()
    print(f"  {settings.large_bodies} bodies of 1 MiB, {settings.large_concurrency} concurrent: {statuses} in "
          f"{took:.1f} s; ingest RSS {before:.1f} -> peak {lb['ingest_peak_rss_mb']:.1f} -> "
          f"{lb['ingest_rss_after_mb']:.1f} MB", flush=True)
    return lb


def render(m):
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
