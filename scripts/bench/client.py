"""Requests to ingest from the benchmark itself (for what wrk and loadgen do
not measure: single spaced events, large bodies, ordered posting)."""

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from .settings import API_KEY


def post_event(url, body, key=None, timeout=30):
    """POST /events; returns (status, parsed body or None, seconds)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    if key:
        headers["Idempotency-Key"] = key
    request = urllib.request.Request(f"{url}/events", data=data, headers=headers, method="POST")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            payload = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        payload, status = e.read(), e.code
    except OSError:
        return None, None, time.monotonic() - started
    try:
        parsed = json.loads(payload) if payload else None
    except ValueError:
        parsed = None
    return status, parsed, time.monotonic() - started


def event_body(patient, n, extra=None):
    data = {"n": n, "test": "glucose", "value": 5.4}
    if extra:
        data.update(extra)
    return {"patientId": patient, "type": "lab_result", "data": data, "ts": "2025-10-01T12:00:00Z"}


def post_patients(url, patients, events, prefix, threads=16):
    """Each patient's `events` posted in order (patients concurrently);
    returns the eventIds in posting order per patient."""
    def one(patient):
        ids = []
        for n in range(events):
            for _ in range(50):
                status, body, _ = post_event(url, event_body(patient, n), key=f"{patient}-{n}")
                if status == 202:
                    ids.append(body["eventId"])
                    break
                time.sleep(0.1)
        return patient, ids
    with ThreadPoolExecutor(threads) as pool:
        return dict(pool.map(one, [f"{prefix}-{p}" for p in range(patients)]))
