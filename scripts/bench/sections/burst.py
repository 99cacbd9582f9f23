"""burst: open loop, 10,000 events/s for 30 s, per 5 s (shedding with
429/503 is allowed)."""

from . import open_loop


def run(settings, harness):
    print(f"burst: {settings.burst_rate:.0f} events/s for {settings.burst_seconds} s", flush=True)
    print("  " + open_loop.INTERVAL_HEADER, flush=True)
    return open_loop.measure(settings, harness, "burst", settings.burst_rate, settings.burst_seconds,
                             settings.soak_patients, settings.burst_interval)


def render(burst):
    b = burst["settings"]
    return open_loop.table(f"Burst (open loop, {b['rate']:.0f} events/s for {b['seconds']} s, "
                           f"{b['patients']:,} patients, per {b['interval_secs']} s)", burst)
