"""slowloris: a normal client on 127.0.0.2 posting one event at a time,
first alone, then while 5,000 connections from 127.0.0.1 send a request
head one byte per second and 1,000 more sit idle (issue 16). Prints the
normal client's p50/p99 both ways and their ratio (target: p99 within 2x),
how many attack connections were closed at once (past the cap per source
address) and when the admitted ones were closed (the header timeout)."""

import asyncio
import http.client
import json
import threading
import time

from ..client import event_body
from ..harness import stamp
from ..settings import API_KEY

SLOW = 5_000
IDLE = 1_000
HEAD = b"POST /events HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\n"


def normal_client(host, port, seconds, prefix):
    """Sequential POSTs from 127.0.0.2 for `seconds`; latencies in ms and statuses."""
    latencies, statuses = [], {}
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        connection = http.client.HTTPConnection(host, port, timeout=30, source_address=("127.0.0.2", 0))
        body = json.dumps(event_body(f"{prefix}-{n % 50}", n)).encode()
        started = time.monotonic()
        try:
            connection.request("POST", "/events", body, {"Content-Type": "application/json",
                                                         "Authorization": f"Bearer {API_KEY}"})
            status = connection.getresponse().status
        except OSError:
            status = "error"
        latencies.append((time.monotonic() - started) * 1000)
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        connection.close()
        n += 1
        time.sleep(0.02)
    return latencies, statuses


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else None


async def attacker(host, port, slow, watch, ended):
    try:
        reader, writer = await asyncio.open_connection(host, port, local_addr=("127.0.0.1", 0))
    except OSError:
        ended.append(("connect_failed", 0.0))
        return
    opened = time.monotonic()
    sent = 0

    async def trickle():
        nonlocal sent
        while slow:
            await asyncio.sleep(1)
            writer.write(HEAD[sent % len(HEAD):sent % len(HEAD) + 1])
            sent += 1
            await writer.drain()

    trickling = asyncio.ensure_future(trickle())
    try:
        await asyncio.wait_for(reader.read(), timeout=watch)
        ended.append(("closed", time.monotonic() - opened))
    except asyncio.TimeoutError:
        ended.append(("open", watch))
    except OSError:
        ended.append(("closed", time.monotonic() - opened))
    finally:
        trickling.cancel()
        writer.close()


async def attack(host, port, watch, ended, started):
    tasks = []
    # Idle ones first and last, so that both kinds are among the admitted.
    half = IDLE // 2
    for i in range(SLOW + IDLE):
        slow = half <= i < half + SLOW
        tasks.append(asyncio.ensure_future(attacker(host, port, slow, watch, ended)))
        if i % 250 == 249:
            await asyncio.sleep(0.05)
    started.set()
    await asyncio.gather(*tasks)


def run(settings, harness):
    print("slowloris", flush=True)
    db = harness.database("slowloris")
    stack = harness.stack(db, f"bench_slowloris_{stamp()}", processors=0)
    host, port = stack.url.removeprefix("http://").split(":")
    port = int(port)
    alone, alone_statuses = normal_client(host, port, 15, "alone")
    watch = 40.0
    ended, started = [], threading.Event()
    thread = threading.Thread(target=lambda: asyncio.run(attack(host, port, watch, ended, started)))
    thread.start()
    started.wait()
    loaded, loaded_statuses = normal_client(host, port, 20, "loaded")
    thread.join()
    stack.stop()
    db.stop()
    at_once = [t for kind, t in ended if kind == "closed" and t < 1.0]
    timed_out = [t for kind, t in ended if kind == "closed" and t >= 1.0]
    result = {
        "slow": SLOW, "idle": IDLE,
        "alone": {"requests": len(alone), "p50_ms": percentile(alone, 0.5), "p99_ms": percentile(alone, 0.99),
                  "statuses": alone_statuses},
        "loaded": {"requests": len(loaded), "p50_ms": percentile(loaded, 0.5), "p99_ms": percentile(loaded, 0.99),
                   "statuses": loaded_statuses},
        "closed_at_once": len(at_once),
        "closed_later": len(timed_out),
        "closed_later_max_s": max(timed_out) if timed_out else None,
        "still_open_after_s": watch,
        "still_open": sum(1 for kind, _ in ended if kind == "open"),
        "connect_failed": sum(1 for kind, _ in ended if kind == "connect_failed"),
    }
    result["p99_ratio"] = result["loaded"]["p99_ms"] / result["alone"]["p99_ms"]
    for line in render(result)[1:]:
        print(line, flush=True)
    return result


def render(r):
    a, b = r["alone"], r["loaded"]
    return [
        f"Slow loris ({r['slow']:,} connections sending a head byte a second and {r['idle']:,} idle, "
        "from 127.0.0.1; a normal client on 127.0.0.2)",
        f"  normal client alone:   {a['requests']} requests, p50 {a['p50_ms']:.1f} ms, p99 {a['p99_ms']:.1f} ms "
        f"{a['statuses']}",
        f"  normal client loaded:  {b['requests']} requests, p50 {b['p50_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms "
        f"{b['statuses']}",
        f"  p99 loaded / alone: {r['p99_ratio']:.2f}x ({'met' if r['p99_ratio'] <= 2 else 'MISSED'}: target within 2x)",
        f"  attack connections: {r['closed_at_once']:,} closed at once (cap per source), {r['closed_later']:,} "
        f"closed later (last after {r['closed_later_max_s'] or 0:.1f} s), {r['still_open']:,} still open after "
        f"{r['still_open_after_s']:.0f} s, {r['connect_failed']:,} could not connect",
    ]
