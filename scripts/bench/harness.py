"""What every section uses: stacks (through `loadgen stack`), the load
generators (wrk, loadgen), measurements on a quiet machine, and the record
of the machine's load that goes to results.json."""

import json
import os
import subprocess
import time

from .measure import Measurement
from .settings import API_KEY
from .stacks import Database, Stack


class Harness:
    def __init__(self, settings):
        self.settings = settings
        self.load_log = []  # one entry per measurement (results.json "load")
        self._stacks = []  # every `loadgen stack` child, in start order
        # Figures the ingest section saw that the footprint table needs
        # (results.json keeps only the derived "footprint").
        self.ingest_footprint = None

    # ------------------------------------------------------------ stacks

    def database(self, name, kind="compiled"):
        return Database(self, name, kind)

    def stack(self, db, database, **options):
        return Stack(self, db, database, **options)

    def open(self, loadgen_stack):
        self._stacks.append(loadgen_stack)
        return loadgen_stack

    def close(self):
        """Stops whatever a failed or interrupted section left running,
        newest first (services before the database they use)."""
        for stack in reversed(self._stacks):
            stack.stop()
        self._stacks.clear()

    # ------------------------------------------------------------ measuring

    def measurement(self, label):
        s = self.settings
        return Measurement(label, s.max_load, s.load_wait_secs, self.load_log)

    # ------------------------------------------------------------ load generators

    def env(self, **extra):
        """The environment of the load generators: API_KEY is read by
        wrk-events.lua, loadgen and k6-events.js."""
        return dict(os.environ, API_KEY=API_KEY, **extra)

    def run_wrk(self, url, concurrency, seconds=None, run=0):
        s = self.settings
        threads = min(2, concurrency)
        out = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds or s.wrk_seconds}s", "--timeout", "5s",
             "-s", str(s.wrk_script), url],
            capture_output=True, text=True, check=True, env=self.env(WRK_RUN=str(run))).stdout
        line = next(l for l in out.splitlines() if l.startswith("WRK_JSON "))
        result = json.loads(line[len("WRK_JSON "):])
        result["errors"] = sum(v for k, v in result.items() if k.startswith("errors_"))
        return result

    def loadgen(self, command, stack, **flags):
        """The command line of `loadgen <command>` against `stack`."""
        args = [str(self.settings.release / "loadgen"), command, "--url", stack.url, "--mongo", stack.uri]
        for name, value in flags.items():
            args += [f"--{name.replace('_', '-')}", str(value)]
        return args


def stamp():
    return f"{int(time.time())}"
