"""One measurement at a time, on a machine as quiet as it gets."""

import os
import time

from .procstat import busy_seconds, loadavg, own_seconds


class Measurement:
    """Waits for a quiet machine first (while the 1-minute load average is
    above `max_load`, up to `wait_secs`), then records the load average and
    how much CPU processes other than the benchmark's own used while it ran
    (of the machine's cores x 100%). Its entry goes to `log` (results.json's
    "load")."""

    def __init__(self, label, max_load, wait_secs, log):
        self.label = label
        self.max_load = max_load
        self.wait_secs = wait_secs
        self.log = log

    def __enter__(self):
        waited = time.time()
        first = loadavg()[0]
        while loadavg()[0] > self.max_load and time.time() - waited < self.wait_secs:
            print(f"  load average {loadavg()[0]:.2f} > {self.max_load}: waiting before {self.label}", flush=True)
            time.sleep(30)
        self.entry = {"label": self.label, "load_at_check": first, "waited_s": round(time.time() - waited),
                      "load_at_start": loadavg()[0]}
        self.entry["started_busy_anyway"] = self.entry["load_at_start"] > self.max_load
        self.t0, self.busy0, self.own0 = time.monotonic(), busy_seconds(), own_seconds()
        return self

    def __exit__(self, *exc):
        wall = max(time.monotonic() - self.t0, 1e-9)
        other = (busy_seconds() - self.busy0) - (own_seconds() - self.own0)
        self.entry.update(seconds=round(wall, 1), load_at_end=loadavg(),
                          other_cpu_pct=round(max(other, 0) * 100 / wall, 1))
        self.log.append(self.entry)
        print(f"  [{self.label}: load {self.entry['load_at_start']:.2f} at start, other processes used "
              f"{self.entry['other_cpu_pct']:.0f}% CPU (of {100 * os.cpu_count()}%) over "
              f"{wall:.0f} s]", flush=True)
        return False


def percentile(values, q):
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]
