"""accept_to_start: with three idle processors delivering to a sink, single
events spaced BENCH_LATENCY_GAP_MS apart (each to a new patient, so spread
over the owners): from the 202 at the client to the delivery's arrival at
the sink; and from the stored acceptedAt to the claim's time (claim.at)."""

import time

from ..client import event_body, post_event
from ..harness import stamp
from ..measure import percentile
from ..sink import Sink
from ..text import fmt


def run(settings, harness):
    print("accept to start", flush=True)
    db = harness.database("latency")
    sink = Sink()
    stack = harness.stack(db, f"bench_latency_{stamp()}", processors=3, processor_env={"DELIVERY_URL": sink.url})
    try:
        stack.wait_balanced(3)
        nudged = stack.session_of(stack.processors[0])  # the processor ingest's /queue nudges go to
        time.sleep(2)
        sent = {}
        with harness.measurement("accept to start") as m:
            for i in range(settings.latency_events):
                status, body, _ = post_event(stack.url, event_body(f"latency-{i}", 0), key=f"latency-{i}")
                if status == 202:
                    sent[body["eventId"]] = time.monotonic()
                time.sleep(settings.latency_gap_ms / 1000)
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

    def stats(v):
        return {"n": len(v), "p50_ms": percentile(v, 0.5), "p99_ms": percentile(v, 0.99),
                "max_ms": max(v, default=None), "min_ms": min(v, default=None)}

    result = {"events": settings.latency_events, "gap_ms": settings.latency_gap_ms, "accepted": len(sent),
              "started": len(sink_ms), "load": m.entry,
              "sink": stats(sink_ms), "claim": stats(claim_ms),
              "by_path": {k: stats(v) for k, v in by_path.items()}}
    s = result["sink"]
    print(f"  accept to start ({len(sink_ms)} of {len(sent)} started): 202 -> sink p50 {s['p50_ms']:.1f} ms "
          f"p99 {s['p99_ms']:.1f} ms max {s['max_ms']:.1f} ms; acceptedAt -> claim.at p50 "
          f"{result['claim']['p50_ms']:.1f} ms p99 {result['claim']['p99_ms']:.1f} ms", flush=True)
    return result


def render(a):
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
