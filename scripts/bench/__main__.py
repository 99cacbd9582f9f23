"""`python -m bench` (from scripts/; `make bench` runs it through
scripts/bench.sh): the sections BENCH_SECTIONS names, in their fixed order,
then the table, results.json/txt and the plots."""

import sys
import time

from . import report
from .harness import Harness
from .sections import SECTIONS, footprint
from .settings import ALL_SECTIONS, Settings
from .stacks import pymongo


def main():
    settings = Settings.from_env()
    unknown = settings.unknown_sections()
    if unknown:
        sys.exit(f"BENCH_SECTIONS: unknown {', '.join(unknown)} (known: {', '.join(ALL_SECTIONS)})")
    if pymongo is None:
        sys.exit("pymongo is missing: run through scripts/bench.sh (make bench), which installs it")
    settings.out.mkdir(parents=True, exist_ok=True)
    harness = Harness(settings)
    results = {"machine": report.machine(settings),
               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "sections": settings.sections,
               "settings": {"wrk_seconds": settings.wrk_seconds, "events_per_patient": settings.events_per_patient,
                            "max_load": settings.max_load},
               "load": harness.load_log}
    try:
        for name in ALL_SECTIONS:
            if name in settings.sections:
                results[name] = SECTIONS[name].run(settings, harness)
            if name == "sleeping_lanes" and "ingest" in results and "end_to_end" in results:
                results["footprint"] = footprint.derive(harness.ingest_footprint, results["end_to_end"])
    finally:
        # Stacks a failed or interrupted section left running.
        harness.close()
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report.write(settings, results)


if __name__ == "__main__":
    main()
