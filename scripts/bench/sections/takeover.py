"""takeover: three processors delivering to a sink that holds each event
5-6 s; one is SIGKILLed while events flow; the time until its patients'
next events reach the sink (first and all)."""

import random
import time
from pathlib import Path

from ..client import post_patients
from ..harness import stamp
from ..measure import percentile
from ..sink import Sink
from ..text import fmt


def takeover_run(harness, i, patients=90, events=6):
    db = harness.database(f"takeover-{i}")
    sink = Sink(hold=(5.0, 6.0))
    stack = harness.stack(db, f"bench_takeover_{i}_{stamp()}", processors=3,
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


def run(settings, harness):
    print("takeover", flush=True)
    runs = []
    for i in range(1, settings.takeover_runs + 1):
        with harness.measurement(f"takeover run {i}") as m:
            r = takeover_run(harness, i)
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


def render(t):
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
