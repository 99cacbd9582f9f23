"""Figures of processes and of the machine, from /proc."""

import os
import resource
import signal
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid):
    """Fields of /proc/<pid>/stat after the command name (which may hold
    spaces): [0] is the state, [1] the parent, [11..14] utime, stime, cutime,
    cstime."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid):
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def memory_kb(pid, key):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def alive(pid):
    """Running (not exited and waiting to be reaped)."""
    try:
        return _stat_fields(pid)[0] not in ("Z", "X")
    except OSError:
        return False


def loadavg():
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def busy_seconds():
    """CPU time the whole machine spent busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / CLK_TCK


def own_seconds():
    """CPU time of this process and everything it started, running or
    reaped. The services are grandchildren (children of `loadgen stack`), so
    every live descendant counts, with what it has reaped itself (cutime,
    cstime); what this process reaped is in RUSAGE_CHILDREN."""
    total = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                for f in ("ru_utime", "ru_stime"))
    children, ticks = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(entry.name)
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        ticks[pid] = sum(int(f) for f in fields[11:15])
    pending = list(children.get(os.getpid(), []))
    while pending:
        pid = pending.pop()
        total += ticks[pid] / CLK_TCK
        pending.extend(children.get(pid, []))
    return total


class ProcessView:
    """A process the benchmark started (through `loadgen stack`), seen by
    pid: CPU time, memory, liveness, SIGKILL. Stopping it is the stack's."""

    def __init__(self, name, pid, log_path=None):
        self.name = name
        self.pid = pid
        self.log_path = log_path or os.devnull

    def cpu(self):
        return cpu_seconds(self.pid)

    def rss_mb(self):
        return memory_kb(self.pid, "VmRSS") / 1024

    def peak_mb(self):
        return memory_kb(self.pid, "VmHWM") / 1024

    def alive(self):
        return alive(self.pid)

    def kill9(self):
        """SIGKILL, as in a crash (its stack reaps it when it stops)."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
