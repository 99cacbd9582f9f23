"""Stacks of real processes, started through `loadgen stack` (the `stack`
crate, the same code the black-box tests start services with): this module
manages one child per stack, reads the JSON line that says where everything
is, and closes the child's stdin to stop it. Python starts none of this
system's services itself (it starts the original NestJS service, for the
side-by-side section: bench/original.py).

Every stack is started as `make run` starts it: SecantusDB's compiled server
(secantusd-rs, `--sync-on-commit`, `--cache-size`; the Python server for one
side-by-side column), the release binaries with their defaults (info logs as
JSON, into target/bench/*.log), except: bench credentials, free ports
(metrics listeners included), and the per-key rate limit raised out of the
way (capacity is measured, not the limiter) in every section but k6.
"""

import json
import subprocess
import time
import urllib.request

try:
    import pymongo
except ImportError:  # scripts/bench.sh installs it into .tools/bench-venv; __main__ says so
    pymongo = None

from .procstat import ProcessView
from .settings import API_KEY, CLIENT, PROCESSOR_TOKEN

# How long a service may drain after SIGTERM (and the database may take to
# stop) before SIGKILL.
STOP_TIMEOUT_S = 30


class LoadgenStack:
    """One `loadgen stack` child: started, described, stopped."""

    def __init__(self, settings, name, args):
        settings.out.mkdir(parents=True, exist_ok=True)
        self.log_path = settings.out / f"{name}-stack.log"
        command = [str(settings.release / "loadgen"), "stack", "--log-dir", str(settings.out), "--name", name,
                   "--cache-size", settings.mongo_cache, "--stop-timeout", str(STOP_TIMEOUT_S), *args]
        with open(self.log_path, "w") as log:
            # Its own session: a Ctrl-C reaches the benchmark, which stops the
            # stacks in order (services before their database).
            self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                         text=True, start_new_session=True)
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise RuntimeError(f"loadgen stack {name} exited with {code}; see {self.log_path}")
        self.info = json.loads(line)
        self.stopped = False

    def stop(self):
        """Closes its stdin: it stops its services (SIGTERM, each up to
        STOP_TIMEOUT_S) and then its database, and exits."""
        if self.stopped:
            return
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=2 * STOP_TIMEOUT_S + 30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.returncode != 0:
            print(f"  loadgen stack exited with {self.proc.returncode}; see {self.log_path}", flush=True)


class Database:
    """A SecantusDB server on a fresh store (`loadgen stack --database KIND`
    with no services), started as scripts/start-mongo.sh starts it for `make
    run` (compiled) or `LOCAL_MONGO=python make run`; its store is deleted
    when it stops."""

    def __init__(self, harness, name, kind="compiled"):
        self.kind = kind
        self._stack = harness.open(LoadgenStack(harness.settings, name, [
            "--database", kind, "--processors", "0", "--ingest", "0"]))
        db = self._stack.info["database"]
        self.port = db["port"]
        self.base = self._stack.info["mongo_base"]
        self.proc = ProcessView(f"secantusd-{kind}", db["pid"], db["log"])
        self._client = None

    def client(self):
        if self._client is None:
            self._client = pymongo.MongoClient(self.base, serverSelectionTimeoutMS=30000)
        return self._client

    def stop(self):
        if self._client is not None:
            self._client.close()
        self._stack.stop()


def scrape(port):
    """`/metrics` of one service as {(name, labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        name, _, labels = key.partition("{")
        try:
            values[(name, "{" + labels if labels else "")] = float(value)
        except ValueError:
            pass
    return values


def label(labels, name):
    marker = f'{name}="'
    start = labels.find(marker)
    if start < 0:
        return ""
    start += len(marker)
    return labels[start:labels.index('"', start)]


class Stack:
    """Ingest and `processors` processor instances on database `database` of
    `db`'s server (`loadgen stack --mongo-base`)."""

    def __init__(self, harness, db, database, processors=1, processing=None, processor_env=None,
                 ingest_env=None, raise_rate_limit=True):
        self.db = db
        self.database = database
        self.uri = f"{db.base}/{database}"
        env = {"INGEST_API_KEYS": f"{CLIENT}:{API_KEY}", "PROCESSOR_TOKEN": PROCESSOR_TOKEN, "DEV_MODE": "true"}
        if raise_rate_limit:
            # Measure capacity, not the default per-key rate limit.
            env.update(RATE_LIMIT_PER_SEC="1000000", RATE_LIMIT_BURST="1000000")
        processor_env = dict(processor_env or {})
        if processing:
            processor_env.update(PROCESSING_MIN_MS=str(processing[0]), PROCESSING_MAX_MS=str(processing[1]))
        args = ["--mongo-base", db.base, "--db-name", database, "--processors", str(processors), "--ingest", "1"]
        args += [a for k, v in env.items() for a in ("--env", f"{k}={v}")]
        args += [a for k, v in processor_env.items() for a in ("--processor-env", f"{k}={v}")]
        args += [a for k, v in (ingest_env or {}).items() for a in ("--ingest-env", f"{k}={v}")]
        self._stack = harness.open(LoadgenStack(harness.settings, database, args))
        info = self._stack.info
        self.processors = [ProcessView(f"processor-{n}", p["pid"], p["log"])
                           for n, p in enumerate(info["processors"])]
        self._processor_metrics = [p["metrics_port"] for p in info["processors"]]
        ingest = info["ingest"][0]
        self.ingest = ProcessView("ingest", ingest["pid"], ingest["log"])
        self.ingest_metrics = ingest["metrics_port"]
        self.url = ingest["url"]

    @property
    def processor(self):
        return self.processors[0] if self.processors else None

    def mongo(self):
        return self.db.client()[self.database]

    def store_operations(self):
        """`store_operation_seconds_count` by operation, summed over ingest
        and every live processor."""
        ops = {}
        ports = [self.ingest_metrics] + [m for p, m in zip(self.processors, self._processor_metrics) if p.alive()]
        for port in ports:
            for (name, labels), value in scrape(port).items():
                if name == "store_operation_seconds_count":
                    op = label(labels, "operation")
                    ops[op] = ops.get(op, 0) + value
        return ops

    def session_of(self, proc):
        doc = self.mongo()["processors"].find_one({"pid": proc.pid})
        return doc["_id"] if doc else None

    def wait_balanced(self, instances, timeout=120):
        """Until the 256 bucket leases are spread over `instances` live
        processors, each with at least 3/4 of a fair share."""
        fair = 256 // instances
        deadline = time.time() + timeout
        started = time.time()
        while time.time() < deadline:
            per_owner = {}
            for lease in self.mongo()["leases"].find({"bucket": {"$exists": True}}, {"owner": 1}):
                if lease.get("owner"):
                    per_owner[lease["owner"]] = per_owner.get(lease["owner"], 0) + 1
            if (sum(per_owner.values()) == 256 and len(per_owner) == instances
                    and all(n >= fair * 3 // 4 for n in per_owner.values())):
                return time.time() - started
            time.sleep(0.25)
        raise RuntimeError(f"leases not spread over {instances} processors within {timeout} s")

    def stop(self, kill=False):
        """SIGTERM to every service (each drains up to STOP_TIMEOUT_S); with
        `kill`, the processors are SIGKILLed first instead (no drain)."""
        if kill:
            for p in self.processors:
                p.kill9()
        self._stack.stop()
