"""k6: tests/load/k6-events.js with its defaults against a make-run stack
(its default rate limit included), once per processing setting; its
thresholds' verdicts."""

import json
import subprocess

from ..harness import stamp
from ..settings import API_KEY
from ..text import fmt


def run(settings, harness):
    print("k6", flush=True)
    if not settings.k6.exists():
        raise RuntimeError(f"{settings.k6} missing (scripts/bench.sh installs it)")
    runs = []
    for setting in settings.k6_runs:
        processing = None if setting == "real" else tuple(int(x) for x in setting.split("-"))
        db = harness.database(f"k6-{setting}")
        stack = harness.stack(db, f"bench_k6_{setting.replace('-', '_')}_{stamp()}", processing=processing,
                              raise_rate_limit=False)
        summary_path = settings.out / f"k6-{setting}-summary.json"
        with harness.measurement(f"k6, processing {setting}") as m:
            proc = subprocess.run(
                [str(settings.k6), "run", "--quiet", "--no-color", "--summary-export", str(summary_path),
                 "-e", f"BASE_URL={stack.url}", "-e", f"API_KEY={API_KEY}"]
                + (["-e", f"HOLD={settings.k6_hold}"] if settings.k6_hold else []) + [str(settings.k6_script)],
                capture_output=True, text=True, env=harness.env(K6_NO_USAGE_REPORT="true"))
        (settings.out / f"k6-{setting}.log").write_text(proc.stdout + proc.stderr)
        stack.stop()
        db.stop()
        metrics = json.loads(summary_path.read_text())["metrics"]
        duration = metrics.get("http_req_duration", {})
        failed = metrics.get("http_req_failed", {})
        checks = metrics.get("checks", {})
        dropped = metrics.get("dropped_iterations", {}).get("count", 0)
        failed_rate = failed.get("value", 0)
        checks_rate = checks.get("value", 1)
        r = {"processing": "real 5-6 s" if processing is None else f"{processing[0]}-{processing[1]} ms",
             "exit_code": proc.returncode, "thresholds_passed": proc.returncode == 0,
             "p95_ms": duration.get("p(95)"), "p90_ms": duration.get("p(90)"), "med_ms": duration.get("med"),
             "max_ms": duration.get("max"), "failed_rate": failed_rate, "checks_rate": checks_rate,
             "requests": metrics.get("http_reqs", {}).get("count"),
             "iterations": metrics.get("iterations", {}).get("count"), "dropped_iterations": dropped,
             "threshold_failed_lt_1pct": failed_rate < 0.01,
             "threshold_p95_lt_100ms": (duration.get("p(95)") or 0) < 100,
             "threshold_checks_gt_99pct": checks_rate > 0.99, "load": m.entry}
        runs.append(r)
        print(f"  k6 ({r['processing']}): thresholds {'passed' if r['thresholds_passed'] else 'FAILED'} "
              f"(exit {proc.returncode}); p95 {r['p95_ms']:.1f} ms, failed {failed_rate * 100:.2f}%, "
              f"{r['iterations']} iterations, {dropped} dropped", flush=True)
    return runs


def render(runs):
    lines = ["k6 (tests/load/k6-events.js, its defaults: ramp to 17/s, hold 1 min, ramp to 200/s, hold 1 min; "
             "thresholds: failed < 1%, p95 < 100 ms, checks > 99%)",
             f"{'processing':<14}{'verdict':>9}{'p95 ms':>8}{'p90 ms':>8}{'max ms':>8}{'failed %':>9}"
             f"{'iterations':>11}{'dropped':>8}"]
    for r in runs:
        lines.append(f"{r['processing']:<14}{'passed' if r['thresholds_passed'] else 'FAILED':>9}"
                     f"{fmt(r['p95_ms']):>8}{fmt(r['p90_ms']):>8}{fmt(r['max_ms'], '.0f'):>8}"
                     f"{r['failed_rate'] * 100:>9.2f}{r['iterations']:>11}{r['dropped_iterations']:>8}")
    return lines
