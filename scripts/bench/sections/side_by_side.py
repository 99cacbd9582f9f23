"""side_by_side: this system and the original NestJS service in the mode the
original was built for (5,000 patients x 1 event, 64 senders, real 5-6 s
processing), in the same run, on a fresh store of each SecantusDB server,
runs alternating between the two (which goes first alternates too), and the
medians printed next to each other. The original is started from the
checkout BENCH_ORIGINAL_DIR names (see bench/original.py); without it, this
system is measured alone and the table says so."""

import os
import statistics
import time

from .. import original
from ..harness import stamp
from .end_to_end import loadgen_run

SERVER_NAMES = {"compiled": "SecantusDB compiled (secantusd-rs)", "python": "SecantusDB Python (secantusd-py)"}
SYSTEMS = {"this": "this (Rust)", "original": "original (NestJS)"}
# This system configured for each server as the README's table advises:
# the Python server evaluates a merged statement's pipeline slowly, so its
# writes go one statement each there (BENCH_PYTHON_MERGED_WRITES_MAX sets
# another size, to measure the advice).
def processor_env(server):
    if server == "python":
        return {"MERGED_WRITES_MAX": os.environ.get("BENCH_PYTHON_MERGED_WRITES_MAX", "1")}
    return None


def _one(settings, harness, system, server, n, mode):
    db = harness.database(f"sbs-{system}-{server}-{n}", kind=server)
    database = f"bench_sbs_{system}_{server}_{n}_{stamp()}"
    if system == "this":
        stack = harness.stack(db, database, processor_env=processor_env(server))
    else:
        stack = harness.open(original.OriginalStack(settings, db, database))
    time.sleep(1)
    with harness.measurement(f"side by side {system} on {server} run {n}") as m:
        result = loadgen_run(harness, stack, mode["patients"], mode["events"], concurrency=mode["concurrency"],
                             timeout=settings.side_by_side_timeout)
    if system == "this" and result["accepted_without_event_id"]:
        raise RuntimeError(f"{result['accepted_without_event_id']} of this system's 202s named no eventId")
    result.update(system=system, server=server, run=n, load=m.entry,
                  processor_env=processor_env(server) if system == "this" else None,
                  all_processed=result["processed"] >= result["accepted"] and result["lost"] == 0)
    stack.stop()
    db.stop()
    done = (f"all processed after {result['end_to_end_secs']:.1f} s" if result["all_processed"] else
            f"{result['processed']:,} of {result['accepted']:,} processed after "
            f"{settings.side_by_side_timeout} s")
    print(f"  {SYSTEMS[system]} on {server}, run {n}: {result['accept_rate_per_sec']:.0f} accepted/s, "
          f"POST p50 {result['post_p50_ms']:.1f} ms p99 {result['post_p99_ms']:.1f} ms, {done}, "
          f"lost {result['lost']}, duplicates {result['duplicates']}", flush=True)
    return result


def _median(runs, key):
    return statistics.median(r[key] for r in runs)


def run(settings, harness):
    print("side by side with the original", flush=True)
    mode = {"patients": settings.side_by_side_patients, "events": 1, "concurrency": 64}
    systems = ["this"]
    if settings.original_dir:
        original.build(settings.original_dir)
        systems.append("original")
    else:
        print("  BENCH_ORIGINAL_DIR is not set: the original is not measured", flush=True)
    runs = []
    for server in settings.side_by_side_servers:
        for n in range(1, settings.side_by_side_runs + 1):
            # Alternate who goes first, so that neither always meets the
            # machine in the same state.
            for system in (systems if n % 2 else list(reversed(systems))):
                runs.append(_one(settings, harness, system, server, n, mode))
    medians = []
    for server in settings.side_by_side_servers:
        for system in systems:
            mine = [r for r in runs if r["system"] == system and r["server"] == server]
            medians.append({
                "system": system, "server": server, "runs": len(mine),
                "accept_rate_per_sec": _median(mine, "accept_rate_per_sec"),
                "post_p99_ms": _median(mine, "post_p99_ms"),
                "end_to_end_secs": _median(mine, "end_to_end_secs"),
                "processed": _median(mine, "processed"),
                "accepted": _median(mine, "accepted"),
                "all_processed_runs": sum(r["all_processed"] for r in mine),
                "lost": sum(r["lost"] for r in mine),
                "duplicates": sum(r["duplicates"] for r in mine),
            })
    return {"settings": mode, "timeout_secs": settings.side_by_side_timeout, "runs": runs, "medians": medians,
            "original_measured": "original" in systems}


def render(sbs):
    st = sbs["settings"]
    lines = [f"Side by side with the original ({st['patients']:,} patients x {st['events']} event, "
             f"{st['concurrency']} concurrent senders, real 5-6 s processing, fresh store each run, "
             f"medians of the runs, in one run of the benchmark)",
             f"{'service':<20}{'database':<36}{'runs':>5}{'accepted/s':>11}{'p99 ms':>8}"
             f"{'all processed after':>22}{'lost/dup':>9}"]
    for m in sbs["medians"]:
        if m["all_processed_runs"] == m["runs"]:
            done = f"{m['end_to_end_secs']:>20.1f} s"
        else:
            done = f"{m['all_processed_runs']}/{m['runs']} runs; {m['processed']:,.0f} done".rjust(22)
        lines.append(f"{SYSTEMS[m['system']]:<20}{SERVER_NAMES[m['server']]:<36}{m['runs']:>5}"
                     f"{m['accept_rate_per_sec']:>11.0f}{m['post_p99_ms']:>8.0f}{done}"
                     f"{m['lost']:>5}/{m['duplicates']}")
    if not sbs["original_measured"]:
        lines.append("  the original was not measured in this run (set BENCH_ORIGINAL_DIR)")
    ours = [r for r in sbs["runs"] if r["system"] == "this"]
    lines.append(f"  this system, all runs: POST errors {sum(r['post_errors'] for r in ours)}; order violations "
                 f"{sum(r['order_violations'] + r['overlap_violations'] for r in ours)}")
    return lines
