"""What burst and soak share (not a section): `loadgen soak|burst` on a
fresh stack at the real processing time; at every interval line it prints,
RSS and CPU of the database and both services are sampled and added to
that interval's row, with the events the processor finished in it and its
database round trips (and writes among them) per finished event."""

import json
import subprocess
import time

from ..harness import stamp
from ..procstat import loadavg
from ..stacks import scrape
from .processing import READS, processor_ops

PROCESS_NAMES = ("db", "ingest", "processor")


def measure(settings, harness, mode, rate, seconds, patients, interval):
    out = settings.out
    db = harness.database(mode)
    stack = harness.stack(db, f"bench_{mode}_{stamp()}")
    time.sleep(1)
    procs = {"db": db.proc, "ingest": stack.ingest, "processor": stack.processor}
    args = harness.loadgen(mode, stack, rate=rate, seconds=seconds, patients=patients, interval=interval)
    rows, summary = [], None
    with harness.measurement(f"{mode} {rate:.0f}/s for {seconds} s") as m, open(out / f"{mode}-loadgen.log", "w") as log:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, env=harness.env())
        last_cpu = {name: p.cpu() for name, p in procs.items()}
        last_work = processor_work(stack)
        last_at = time.monotonic()
        for line in proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            row = json.loads(line)
            if row["kind"] in ("minute", "interval"):
                now = time.monotonic()
                for name, p in procs.items():
                    cpu = p.cpu()
                    row[f"{name}_cpu_pct"] = (cpu - last_cpu[name]) * 100 / max(now - last_at, 1e-9)
                    row[f"{name}_rss_mb"] = p.rss_mb()
                    last_cpu[name] = cpu
                row["loadavg"] = loadavg()[0]
                work = processor_work(stack)
                add_work(row, last_work, work, now - last_at)
                last_work = work
                last_at = now
                rows.append(row)
                print("  " + interval_line(row), flush=True)
            elif row["kind"] == "summary":
                summary = row
        if proc.wait() != 0 or summary is None:
            stack.stop()
            db.stop()
            raise RuntimeError(f"loadgen {mode} failed (see {out / f'{mode}-loadgen.log'})")
    summary["peak_rss_mb"] = {"ingest": stack.ingest.peak_mb(), "processor": stack.processor.peak_mb(),
                              "db": db.proc.peak_mb()}
    stack.stop()
    db.stop()
    print(f"  {mode}: sent {summary['sent']}, accepted {summary['accepted']}, errors {summary['errors']}, "
          f"dropped by the client {summary['dropped_by_client']}; drained in {summary['drain_secs']:.1f} s "
          f"({'complete' if summary['drained'] else 'NOT complete'}); {lost_text(summary)}, "
          f"duplicated {summary['duplicated']}; driver CPU {summary['driver_cpu_pct_sending']:.0f}% "
          f"of a core", flush=True)
    return {"settings": {"rate": rate, "seconds": seconds, "patients": patients, "interval_secs": interval},
            "intervals": rows, "summary": summary, "load": m.entry}


def processor_work(stack):
    """(events finished, round trips, writes among them) so far, or None
    when the processor's metrics cannot be read."""
    try:
        finished = sum(v for port in stack._processor_metrics for (name, _), v in scrape(port).items()
                       if name == "events_processed_total")
        ops = processor_ops(stack)
    except OSError:
        return None
    trips = sum(ops.values())
    return finished, trips, sum(n for op, n in ops.items() if not op.startswith(READS))


def add_work(row, before, after, seconds):
    row["processed_per_s"] = row["trips_per_event"] = row["writes_per_event"] = None
    if before is None or after is None:
        return
    finished = after[0] - before[0]
    row["processed_per_s"] = finished / max(seconds, 1e-9)
    if finished:
        row["trips_per_event"] = (after[1] - before[1]) / finished
        row["writes_per_event"] = (after[2] - before[2]) / finished


def lost_text(s):
    if s["lost"] is not None:
        return f"lost {s['lost']}"
    return (f"lost unknown: {s['without_outcome']} accepted events still without an outcome "
            f"when the drain timed out")


def interval_line(r):
    backlog = "-" if r["backlog"] is None else f"{r['backlog']}"
    return (f"{r['end_s']:>7.0f}{r['sent']:>8}{r['accepted']:>8}{r['status_429']:>6}{r['status_503']:>7}"
            f"{r['status_other']:>6}{r['transport_errors']:>7}{r['dropped_by_client']:>8}"
            f"{r['p50_ms']:>8.1f}{r['p99_ms']:>8.1f}{r['max_ms']:>8.0f}{r['accepted_so_far']:>9}"
            f"{backlog:>8}{r['driver_cpu_pct']:>6.0f}"
            f"{r['db_rss_mb']:>7.0f}/{r['ingest_rss_mb']:.0f}/{r['processor_rss_mb']:.0f}"
            f"{r['db_cpu_pct']:>7.0f}/{r['ingest_cpu_pct']:.0f}/{r['processor_cpu_pct']:.0f}"
            f"{optional(r.get('processed_per_s'), '.0f'):>7}{optional(r.get('trips_per_event'), '.2f'):>7}"
            f"/{optional(r.get('writes_per_event'), '.2f')}")


def optional(value, spec):
    return "-" if value is None else format(value, spec)


INTERVAL_HEADER = (f"{'t s':>7}{'sent':>8}{'202':>8}{'429':>6}{'503':>7}{'other':>6}{'transp':>7}"
                   f"{'dropped':>8}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'accepted':>9}{'backlog':>8}"
                   f"{'drv%':>6}{'RSS MB db/ing/proc':>20}{'CPU% db/ing/proc':>18}{'done/s':>7}"
                   f"{'trips/writes per event':>24}")


def table(title, run):
    s = run["summary"]
    lines = [title, INTERVAL_HEADER]
    lines += [interval_line(r) for r in run["intervals"]]
    lines.append(f"  sent {s['sent']} ({s['achieved_send_rate']:.0f}/s), accepted {s['accepted']} "
                 f"({s['accepted_rate']:.0f}/s), 429 {s['status_429']}, 503 {s['status_503']}, "
                 f"other {s['status_other']}, transport {s['transport_errors']}, dropped by the client "
                 f"{s['dropped_by_client']}; latency p50 {s['p50_ms']:.1f} ms p99 {s['p99_ms']:.1f} ms "
                 f"max {s['max_ms']:.0f} ms")
    lines.append(f"  backlog drained in {s['drain_secs']:.1f} s after the last interval "
                 f"({'complete' if s['drained'] else 'NOT complete'}); {lost_text(s)}, "
                 f"duplicated {s['duplicated']} of {s['accepted_ids']} accepted eventIds")
    if s["unexpected_processed"]:
        lines.append(f"  {s['unexpected_processed']} outcomes of events the driver never saw a 202 for "
                     f"(requests that timed out at the client after ingest had stored them)")
    lines.append(f"  driver fell behind its schedule by at most {s['start_lag_max_ms']:.0f} ms "
                 f"(latencies are measured from when each request was due)")
    lines.append(f"  driver (loadgen) CPU: {s['driver_cpu_secs_sending']:.1f} s while sending, "
                 f"{s['driver_cpu_pct_sending']:.0f}% of one core")
    return lines
