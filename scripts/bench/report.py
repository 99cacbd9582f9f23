"""The table printed at the end and written to results.txt, results.json,
and the plots (bench.png, soak.png, copied to docs/)."""

import json
import os
import platform
import shutil
import sys
from pathlib import Path

from .sections import SECTIONS, footprint

# Sections rendered with a blank line after them (ingest and end_to_end end
# with one of their own; the footprint block comes between them and these).
_SPACED = ["side_by_side", "fleet", "takeover", "accept_to_start", "memory", "mllp", "k6", "burst", "soak"]


def machine(settings):
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    total = next(int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines()
                 if l.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(total / 1024 / 1024, 1),
            "kernel": platform.release(),
            "db": f"secantusd-rs (SecantusDB compiled server), --sync-on-commit, --cache-size {settings.mongo_cache}"}


def load_lines(log, max_load):
    lines = [f"Machine load per measurement (waits while the 1-minute load average is above {max_load}; "
             f"'other CPU' is what processes other than the benchmark's used, of {100 * os.cpu_count()}%)"]
    for e in log:
        lines.append(f"  {e['label']:<44} load {e['load_at_start']:>5.2f} at start"
                     f"{' (gave up waiting)' if e['started_busy_anyway'] else ''}"
                     f", waited {e['waited_s']:>4} s, other CPU {e['other_cpu_pct']:>5.1f}%")
    return lines


def table(results, max_load):
    lines = []
    if "ingest" in results:
        lines += SECTIONS["ingest"].render(results["ingest"])
    if "end_to_end" in results:
        lines += SECTIONS["end_to_end"].render(results["end_to_end"])
    if "footprint" in results or "sleeping_lanes" in results:
        lines += footprint.render(results.get("footprint"), results.get("sleeping_lanes"))
    for name in _SPACED:
        if name in results:
            lines += SECTIONS[name].render(results[name]) + [""]
    if results.get("load"):
        lines += load_lines(results["load"], max_load) + [""]
    return "\n".join(lines).rstrip("\n")


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot(results, path):
    """Ingest latency against concurrency; events/min against patients."""
    plt = _pyplot()
    if plt is None:
        print("matplotlib missing: no plot", file=sys.stderr)
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for mode, style in (("processor down", "-"), ("processor working", "--")):
        rows = [r for r in results["ingest"] if r["mode"] == mode]
        if not rows:
            continue
        xs = [r["concurrency"] for r in rows]
        for key, label, color in (("p50_ms", "p50", "tab:blue"), ("p95_ms", "p95", "tab:orange"),
                                  ("p99_ms", "p99", "tab:red")):
            left.plot(xs, [r[key] for r in rows], style, color=color, marker="o",
                      label=f"{label} ({mode})")
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("concurrent connections")
    left.set_ylabel("ingest latency (ms)")
    left.set_title("Ingest latency percentiles")
    left.axhline(100, color="grey", linewidth=0.8, linestyle=":")
    left.legend(fontsize=7)
    rows = results["end_to_end"]
    right.plot([r["patients"] for r in rows], [r["events_per_min"] for r in rows], marker="o",
               label="measured")
    right.plot([r["patients"] for r in rows],
               [r["patients"] * 60 / (r["mean_processing_ms"] / 1000) for r in rows], ":", marker="x",
               label="ideal (patients x 60 / 5.5 s)")
    right.axhline(1000, color="grey", linewidth=0.8, linestyle="--", label="original target 1,000/min")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("concurrently active patients")
    right.set_ylabel("events processed per minute")
    right.set_title("End to end at the real 5-6 s processing")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def plot_soak(soak, path):
    """Latency, backlog and RSS per minute of the soak."""
    plt = _pyplot()
    if plt is None:
        print("matplotlib missing: no soak plot", file=sys.stderr)
        return False
    rows = soak["intervals"]
    xs = [r["end_s"] / 60 for r in rows]
    fig, (lat, backlog, rss) = plt.subplots(1, 3, figsize=(15, 4.5))
    lat.plot(xs, [r["p50_ms"] for r in rows], marker="o", label="p50")
    lat.plot(xs, [r["p99_ms"] for r in rows], marker="o", label="p99")
    lat.set_xlabel("minute")
    lat.set_ylabel("POST /events latency (ms)")
    lat.set_title(f"Latency per minute at {soak['settings']['rate']:.0f} events/s")
    lat.set_ylim(bottom=0)
    lat.legend(fontsize=8)
    backlog.plot(xs, [r["backlog"] if r["backlog"] is not None else float("nan") for r in rows],
                 marker="o", color="tab:red", label="accepted - processed")
    backlog.axhline(soak["settings"]["rate"] * 5.5, color="grey", linewidth=0.8, linestyle=":",
                    label="rate x 5.5 s (in processing)")
    backlog.set_xlabel("minute")
    backlog.set_ylabel("events")
    backlog.set_title("Backlog at each minute boundary")
    backlog.set_ylim(bottom=0)
    backlog.legend(fontsize=8)
    for name, label in (("db", "database (secantusd-rs)"), ("ingest", "ingest"), ("processor", "processor")):
        rss.plot(xs, [r[f"{name}_rss_mb"] for r in rows], marker="o", label=label)
    rss.set_xlabel("minute")
    rss.set_ylabel("RSS (MB)")
    rss.set_title("Resident memory per minute")
    rss.set_ylim(bottom=0)
    rss.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def write(settings, results):
    """Prints the table; writes results.json, results.txt and the plots
    (copied to docs/); prints what it wrote."""
    out, docs = settings.out, settings.docs
    text = table(results, settings.max_load)
    print()
    print(text)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.txt").write_text(text + "\n")
    written = [out / "results.json", out / "results.txt"]
    docs.mkdir(exist_ok=True)
    if "ingest" in results and "end_to_end" in results and plot(results, out / "bench.png"):
        shutil.copy(out / "bench.png", docs / "bench.png")
        written.append(out / "bench.png")
    if "soak" in results and plot_soak(results["soak"], out / "soak.png"):
        shutil.copy(out / "soak.png", docs / "soak.png")
        written.append(out / "soak.png")
    print(f"\nwrote {', '.join(str(w) for w in written)}")
