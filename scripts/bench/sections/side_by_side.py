"""side_by_side: this system in the mode the original NestJS service was
measured in (5,000 patients x 1 event, 64 senders, real 5-6 s processing),
on a fresh store of each SecantusDB server, printed next to the original's
figures."""

import time

from ..harness import stamp
from .end_to_end import loadgen_run

# The original NestJS service, measured earlier on this same machine (2 cores)
# in the same mode as this section, once on each SecantusDB server. That
# service is not in this repository, so its figures are kept here as
# constants: accepted events/s, POST p99 and the time from the first request
# until every event was processed.
ORIGINAL_NESTJS = [
    {"service": "original (NestJS)", "server": "compiled", "db": "SecantusDB compiled (secantusd-rs)",
     "accept_rate_per_sec": 267, "post_p99_ms": 912, "end_to_end_secs": 26.0},
    {"service": "original (NestJS)", "server": "python", "db": "SecantusDB Python (secantusd-py)",
     "accept_rate_per_sec": 227, "post_p99_ms": 812, "end_to_end_secs": 44.3},
]
SERVER_NAMES = {"compiled": "SecantusDB compiled (secantusd-rs)", "python": "SecantusDB Python (secantusd-py)"}


def run(settings, harness):
    print("side by side with the original", flush=True)
    mode = {"patients": settings.side_by_side_patients, "events": 1, "concurrency": 64}
    p, e, c = mode["patients"], mode["events"], mode["concurrency"]
    runs = []
    for server in settings.side_by_side_servers:
        for n in range(1, settings.side_by_side_runs + 1):
            db = harness.database(f"sbs-{server}-{n}", kind=server)
            stack = harness.stack(db, f"bench_sbs_{server}_{n}_{stamp()}")
            time.sleep(1)
            with harness.measurement(f"side by side {server} run {n}") as m:
                ours = loadgen_run(harness, stack, p, e, concurrency=c, timeout=1800)
            ours.update(server=server, run=n, load=m.entry)
            stack.stop()
            db.stop()
            runs.append(ours)
            print(f"  side by side on {server}, run {n}: {ours['accept_rate_per_sec']:.0f} accepted/s, "
                  f"POST p50 {ours['post_p50_ms']:.1f} ms p99 {ours['post_p99_ms']:.1f} ms "
                  f"max {ours['post_max_ms']:.0f} ms, all processed after {ours['end_to_end_secs']:.1f} s, "
                  f"lost {ours['lost']}, duplicates {ours['duplicates']}", flush=True)
    return {"settings": mode, "runs": runs, "original": ORIGINAL_NESTJS}


def render(sbs):
    st = sbs["settings"]
    lines = [f"Side by side with the original ({st['patients']:,} patients x {st['events']} event, "
             f"{st['concurrency']} concurrent senders, real 5-6 s processing, fresh store each run)",
             f"{'service':<22}{'database':<36}{'accepted/s':>11}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}"
             f"{'all processed after':>21}{'lost/dup':>9}"]
    for o in sbs["runs"]:
        lines.append(f"{'this (Rust), run ' + str(o['run']):<22}{SERVER_NAMES[o['server']]:<36}"
                     f"{o['accept_rate_per_sec']:>11.0f}{o['post_p50_ms']:>8.1f}{o['post_p99_ms']:>8.1f}"
                     f"{o['post_max_ms']:>8.0f}{o['end_to_end_secs']:>19.1f} s{o['lost']:>5}/{o['duplicates']}")
    for r in sbs["original"]:
        lines.append(f"{r['service']:<22}{r['db']:<36}{r['accept_rate_per_sec']:>11.0f}{'-':>8}"
                     f"{r['post_p99_ms']:>8.0f}{'-':>8}{r['end_to_end_secs']:>19.1f} s{'-':>9}")
    errors = sum(o["post_errors"] for o in sbs["runs"])
    lines.append(f"  POST errors over all runs: {errors}; order violations: "
                 f"{sum(o['order_violations'] + o['overlap_violations'] for o in sbs['runs'])}")
    return lines
