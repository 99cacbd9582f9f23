"""soak: open loop, 1,000 events/s for 10 minutes, per minute, with RSS of
the database and both services; judged first minute against last."""

from . import open_loop


def run(settings, harness):
    print(f"soak: {settings.soak_rate:.0f} events/s for {settings.soak_seconds} s over "
          f"{settings.soak_patients} patients", flush=True)
    print("  " + open_loop.INTERVAL_HEADER, flush=True)
    soak = open_loop.measure(settings, harness, "soak", settings.soak_rate, settings.soak_seconds,
                             settings.soak_patients, settings.soak_interval)
    soak["targets"] = targets(soak)
    return soak


def targets(soak):
    """Whether the soak stayed steady: first minute against last minute."""
    rows, summary = soak["intervals"], soak["summary"]
    if len(rows) < 2:
        return {"note": "needs at least two intervals"}
    first, last = rows[0], rows[-1]
    rate = soak["settings"]["rate"]
    result = {}
    result["p99"] = {"first_ms": first["p99_ms"], "last_ms": last["p99_ms"],
                     "met": last["p99_ms"] <= 1.5 * first["p99_ms"]}
    # Backlog rule: in a steady state the backlog is the events being
    # processed (rate x 5-6 s) plus those waiting for their patient's lane;
    # with each patient receiving an event only every patients/rate = 10 s,
    # none should wait. A minute-boundary snapshot may differ from the first
    # by the arrivals of a few seconds of jitter; a last backlog above the
    # first by more than 10 s of arrivals (10 x rate events) means the
    # processing fell behind for at least 10 s net, and so is not bounded.
    allowed = first["backlog"] + 10 * rate if first["backlog"] is not None else None
    result["backlog"] = {"first": first["backlog"], "last": last["backlog"], "allowed_last": allowed,
                         "met": allowed is not None and last["backlog"] is not None
                         and last["backlog"] <= allowed}
    rss = {}
    for name in open_loop.PROCESS_NAMES:
        a, b = first[f"{name}_rss_mb"], last[f"{name}_rss_mb"]
        rss[name] = {"first_mb": a, "last_mb": b, "met": b <= a * 1.10}
    result["rss_flat"] = {"processes": rss, "met": all(r["met"] for r in rss.values())}
    result["errors"] = {"errors": summary["errors"], "dropped_by_client": summary["dropped_by_client"],
                        "met": summary["errors"] == 0 and summary["dropped_by_client"] == 0}
    result["met"] = all(t["met"] for t in result.values())
    return result


def target_lines(t):
    if "met" not in t:
        return [f"  targets: {t.get('note', 'not evaluated')}"]

    def verdict(ok):
        return "met" if ok else "MISSED"

    rss = ", ".join(f"{n} {r['first_mb']:.0f} -> {r['last_mb']:.0f} MB"
                    for n, r in t["rss_flat"]["processes"].items())
    return [
        f"  targets: {verdict(t['met'])}",
        f"    p99 last minute within 1.5x of the first: {t['p99']['first_ms']:.1f} -> "
        f"{t['p99']['last_ms']:.1f} ms: {verdict(t['p99']['met'])}",
        f"    backlog bounded (last <= first + 10 s of arrivals): {t['backlog']['first']} -> "
        f"{t['backlog']['last']} (allowed {t['backlog']['allowed_last']}): {verdict(t['backlog']['met'])}",
        f"    RSS flat (last within 10% of the first minute): {rss}: {verdict(t['rss_flat']['met'])}",
        f"    errors 0 and no client drops: {t['errors']['errors']} errors, "
        f"{t['errors']['dropped_by_client']} dropped: {verdict(t['errors']['met'])}",
    ]


def render(soak):
    o = soak["settings"]
    return (open_loop.table(f"Soak (open loop, {o['rate']:.0f} events/s for {o['seconds']} s, "
                            f"{o['patients']:,} patients, per {o['interval_secs']} s)", soak)
            + target_lines(soak["targets"]))
