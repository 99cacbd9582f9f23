"""The original NestJS service (github.com/gustavodsf/medical-integration),
started from a checkout that BENCH_ORIGINAL_DIR names, on a database of one
of the benchmark's SecantusDB servers, so that it is measured in the same
run, on the same machine, as this system.

It is started as its own Dockerfiles start it (`npm run start:prod`, which is
`node dist/src/main`, in each service; MONGO_URI, PROCESSOR_URL, PORT), on
free ports; `npm install` and `npm run build` run first if a service has not
been built yet (its repository has no lock file, so `npm ci`, which its
Dockerfiles use, cannot run: the declared version ranges are installed).
"""

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from .procstat import ProcessView

SERVICES = ("processor-service", "ingest-service")
STOP_TIMEOUT_S = 30


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _app(root, service):
    return Path(root) / "services" / service / "app"


def build(root):
    """Installs and builds each service that has no `dist/src/main.js` yet."""
    for service in SERVICES:
        app = _app(root, service)
        if not (app / "package.json").exists():
            raise RuntimeError(f"BENCH_ORIGINAL_DIR={root} is not a checkout of the original "
                               f"(no services/{service}/app/package.json)")
        if (app / "dist" / "src" / "main.js").exists():
            continue
        print(f"  building the original's {service} (npm install, npm run build)", flush=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=app, check=True)
        subprocess.run(["npm", "run", "build"], cwd=app, check=True, stdout=subprocess.DEVNULL)


def _wait_healthy(port, proc, log_path, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the original's service on port {port} exited with {proc.returncode}; "
                               f"see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the original's service on port {port} did not answer /health within {timeout} s")


class OriginalStack:
    """Its processor and ingest on database `database` of `db`'s server;
    the attributes the sections read are those of `stacks.Stack`."""

    def __init__(self, settings, db, database):
        self.db = db
        self.database = database
        self.uri = f"{db.base}/{database}"
        self._procs = []
        self._logs = []
        processor_port, ingest_port = _free_port(), _free_port()
        try:
            processor = self._start(settings, "processor-service", processor_port, {})
            ingest = self._start(settings, "ingest-service", ingest_port,
                                 {"PROCESSOR_URL": f"http://127.0.0.1:{processor_port}"})
        except BaseException:
            self.stop()
            raise
        self.processors = [processor]
        self.ingest = ingest
        self.url = f"http://127.0.0.1:{ingest_port}"

    def _start(self, settings, service, port, extra):
        settings.out.mkdir(parents=True, exist_ok=True)
        log_path = settings.out / f"original-{service}-{self.database}.log"
        log = open(log_path, "w")
        self._logs.append(log)
        env = dict(os.environ, MONGO_URI=self.uri, PORT=str(port), **extra)
        proc = subprocess.Popen(["node", "dist/src/main"], cwd=_app(settings.original_dir, service), env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._procs.append(proc)
        _wait_healthy(port, proc, log_path)
        return ProcessView(f"original-{service}", proc.pid, str(log_path))

    def stop(self):
        """SIGTERM to the ingest, then the processor; SIGKILL past the timeout."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()
