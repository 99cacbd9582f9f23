"""The downstream system for `DELIVERY_URL`, in the benchmark's process so
that arrival times share its monotonic clock."""

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Sink:
    """Records when each delivery arrived (this process's monotonic clock)
    and holds it `hold` seconds (uniform in the range) before answering 200,
    as a real system would."""

    def __init__(self, hold=(0.0, 0.0)):
        self.hold = hold
        self.records = []  # (arrived, patientId, eventId, seq)
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                arrived = time.monotonic()
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    event = json.loads(body)
                except ValueError:
                    event = {}
                with sink.lock:
                    sink.records.append((arrived, event.get("patientId"), event.get("eventId"),
                                         event.get("seq")))
                low, high = sink.hold
                if high > 0:
                    time.sleep(random.uniform(low, high))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 1024

            def handle_error(self, request, client_address):
                pass  # a killed processor's connection: nothing to report

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/deliveries"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def snapshot(self):
        with self.lock:
            return list(self.records)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
