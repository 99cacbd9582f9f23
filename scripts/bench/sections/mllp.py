"""mllp: HL7 v2 over MLLP. Intake side by side in one run: HTTP (wrk, 64
connections) against MLLP with 1 connection (serial by design: each message
is committed before its ACK, so commit latency bounds it) and with 16; the
processor down, so intake is measured alone. Then HL7 in -> HL7 out: P
patients x M messages through a processor delivering over MLLP to a
receiver that holds each message 5-6 s, against the ideal (M x 5.5 s)."""

import json
import socket
import subprocess

from ..harness import stamp
from ..settings import CLIENT


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def send(settings, harness, address, uri, connections, patients, messages, wait=False, timeout=900):
    args = [str(settings.release / "loadgen"), "mllp", "--address", address, "--mongo", uri,
            "--connections", str(connections), "--patients", str(patients), "--messages", str(messages),
            "--timeout", str(timeout)]
    if wait:
        args.append("--wait")
    out = subprocess.run(args, capture_output=True, text=True, check=True, env=harness.env()).stdout
    return json.loads(out)


def intake(settings, harness):
    db = harness.database("mllp-intake")
    port = free_port()
    stack = harness.stack(db, f"bench_mllp_{stamp()}", processors=0,
                          ingest_env={"MLLP_LISTENERS": f"{CLIENT}@127.0.0.1:{port}"})
    address = f"127.0.0.1:{port}"
    rows = []
    with harness.measurement("mllp intake: HTTP c=64") as m:
        http = harness.run_wrk(stack.url, 64)
    rows.append({"mode": "HTTP (wrk)", "connections": 64, "rate": http["rps"], "p50_ms": http["p50_ms"],
                 "p99_ms": http["p99_ms"], "errors": http["errors"], "load": m.entry})
    print(f"  HTTP c=64: {http['rps']:.0f}/s", flush=True)
    for connections, patients in ((1, settings.mllp_patients_serial), (16, settings.mllp_patients)):
        with harness.measurement(f"mllp intake: {connections} connections") as m:
            r = send(settings, harness, address, stack.uri, connections, patients, settings.mllp_messages)
        rows.append({"mode": "MLLP", "connections": connections, "rate": r["rate"], "p50_ms": r["p50_ms"],
                     "p99_ms": r["p99_ms"], "errors": r["not_aa"] + (r["messages"] - r["stored"]),
                     "stored": r["stored"], "messages": r["messages"], "load": m.entry})
        print(f"  MLLP {connections} connection(s): {r['rate']:.0f} msg/s, p99 {r['p99_ms']:.1f} ms, "
              f"stored {r['stored']}/{r['messages']}", flush=True)
    stack.stop()
    db.stop()
    return rows


def end_to_end(settings, harness):
    receiver = subprocess.Popen([str(settings.release / "loadgen"), "mllp-receiver", "--hold-min-ms", "5000",
                                 "--hold-max-ms", "6000"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
    try:
        receiver_port = json.loads(receiver.stdout.readline())["port"]
        db = harness.database("mllp-e2e")
        port = free_port()
        stack = harness.stack(db, f"bench_mllp_e2e_{stamp()}", processors=1,
                              ingest_env={"MLLP_LISTENERS": f"{CLIENT}@127.0.0.1:{port}"},
                              processor_env={"DELIVERY_MLLP": f"127.0.0.1:{receiver_port}"})
        patients, messages = settings.mllp_e2e_patients, settings.mllp_e2e_messages
        with harness.measurement("mllp end to end") as m:
            r = send(settings, harness, f"127.0.0.1:{port}", stack.uri, 16, patients, messages, wait=True)
        stack.stop()
        db.stop()
    finally:
        receiver.stdin.close()
        summary = json.loads(receiver.stdout.readline() or "{}")
        receiver.wait()
    ideal = messages * 5.5
    print(f"  HL7 in -> out {patients} x {messages}: {r['end_to_end_s']:.1f} s (ideal {ideal:.1f} s), "
          f"received {summary.get('received')}, repeated {summary.get('repeated')}, "
          f"out of order {summary.get('out_of_order')}", flush=True)
    return {"patients": patients, "messages": messages, "seconds": r["end_to_end_s"], "ideal_s": ideal,
            "intake_rate": r["rate"], "receiver": summary, "load": m.entry}


def run(settings, harness):
    print("mllp", flush=True)
    return {"intake": intake(settings, harness), "end_to_end": end_to_end(settings, harness)}


def render(result):
    lines = ["HL7 v2 over MLLP: intake (processor down), side by side"]
    lines.append(f"{'mode':<12}{'conns':>6}{'msg/s':>9}{'x HTTP':>8}{'p50 ms':>8}{'p99 ms':>8}{'errors':>7}")
    http = next((r["rate"] for r in result["intake"] if r["mode"].startswith("HTTP")), None)
    for r in result["intake"]:
        ratio = f"{r['rate'] / http:.2f}" if http else "-"
        lines.append(f"{r['mode']:<12}{r['connections']:>6}{r['rate']:>9.0f}{ratio:>8}{r['p50_ms']:>8.1f}"
                     f"{r['p99_ms']:>8.1f}{r['errors']:>7}")
    e = result["end_to_end"]
    rec = e.get("receiver", {})
    lines.append(f"HL7 in -> HL7 out, {e['patients']} patients x {e['messages']} messages, receiver holding 5-6 s: "
                 f"{e['seconds']:.1f} s (ideal {e['ideal_s']:.1f} s, {e['seconds'] / e['ideal_s']:.2f}x); "
                 f"received {rec.get('received')}, repeated {rec.get('repeated')}, "
                 f"out of order {rec.get('out_of_order')}")
    return lines
