"""A real HTTP endpoint that records the JSON POSTed to it: an alert webhook for tests.

    with WebhookRecorder() as hook:
        ... --alert-webhook hook.url ...
        alert = hook.wait_for(lambda doc: doc["alert"]["name"] == "drift")
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WebhookRecorder:
    def __init__(self):
        self.received: list[dict] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                recorder.received.append(json.loads(body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/alerts"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def wait_for(self, predicate=lambda doc: True, timeout: float = 30.0) -> dict:
        """The first received document for which `predicate` holds (AssertionError after `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            for doc in list(self.received):
                if predicate(doc):
                    return doc
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching webhook call within {timeout:g}s; received {self.received}")
            time.sleep(0.05)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "WebhookRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
