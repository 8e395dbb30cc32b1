"""A loopback HTTP server that records the requests it gets and answers from a script: the alert sinks' webhook
and Slack API, or a source API that fails on purpose, in the tests that need a real HTTP peer."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Recorder:
    """A tiny HTTP server on 127.0.0.1 that records requests and answers from a script.

    Args:
        statuses: Status codes for successive requests; when exhausted, ``default_status``.
        default_status: Status once the script is used up.
        body: JSON body of every answer.
        headers: Extra headers of every answer.
        delays: Seconds to wait before answering successive requests (to provoke client timeouts).
    """

    def __init__(self, statuses=(), default_status=200, body=None, headers=None, delays=()):
        self.statuses = list(statuses)
        self.default_status = default_status
        self.body = json.dumps(body if body is not None else {"ok": True}).encode()
        self.headers = dict(headers or {})
        self.delays = list(delays)
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                with recorder._lock:
                    recorder.requests.append(
                        {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": raw}
                    )
                    status = recorder.statuses.pop(0) if recorder.statuses else recorder.default_status
                    delay = recorder.delays.pop(0) if recorder.delays else 0
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    for name, value in recorder.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(recorder.body)))
                    self.end_headers()
                    self.wfile.write(recorder.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Recorder:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def json_bodies(self) -> list[dict]:
        """Bodies of the recorded requests, parsed as JSON."""
        return [json.loads(r["body"]) for r in self.requests]
