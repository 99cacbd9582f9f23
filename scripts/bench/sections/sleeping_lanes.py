"""sleeping_lanes: processor CPU while 10,000 patients' events each sleep
in a 30 s processing step."""

import subprocess
import time

from ..harness import stamp

PATIENTS = 10_000


def run(settings, harness, patients=PATIENTS):
    print("sleeping lanes", flush=True)
    db = harness.database("lanes")
    stack = harness.stack(db, f"bench_lanes_{stamp()}", processing=(30_000, 30_000))
    with harness.measurement("sleeping lanes") as m:
        subprocess.run(harness.loadgen("run", stack, patients=patients, events=1, concurrency=64, timeout=1),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=harness.env())
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


def render(s):
    """Its line in the footprint table."""
    return [f"  {s['patients']} sleeping lanes: processor {s['processor_cpu_pct']:.2f}% CPU "
            f"over {s['window_s']:.0f} s, RSS {s['processor_rss_mb']:.1f} MB"]
