"""A real HTTP receiver for webhook tests: a threaded http.server on 127.0.0.1 that records every request and
verifies its signature with the standardwebhooks library (the independent check), and answers as each test asks."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: Any = None  # the payload Webhook.verify returned, or the error it raised


@dataclass
class Receiver:
    url: str
    requests: list[Received] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)  # path -> the endpoint's secret, to verify with
    # path -> answers in turn (status, body, seconds to wait first); the last one repeats
    answers: dict[str, list[tuple[int, bytes, float]]] = field(default_factory=dict)
    headers: dict[str, dict[str, str]] = field(default_factory=dict)

    def received(self, path: str) -> list[Received]:
        return [request for request in self.requests if request.path == path]

    def events(self, path: str) -> list[str]:
        return [request.verified["type"] for request in self.received(path) if isinstance(request.verified, dict)]


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    receiver = Receiver(url="")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {name.lower(): value for name, value in self.headers.items()}
            record = Received(self.path, headers, body)
            secret = receiver.secrets.get(self.path)
            if secret:
                try:
                    record.verified = Webhook(secret).verify(body, headers)
                except WebhookVerificationError as error:
                    record.verified = error
            with lock:
                receiver.requests.append(record)
                turn = len(receiver.received(self.path)) - 1
            answers = receiver.answers.get(self.path, [(200, b"ok", 0.0)])
            status, content, wait = answers[min(turn, len(answers) - 1)]
            time.sleep(wait)
            try:
                self.send_response(status)
                for name, value in receiver.headers.get(self.path, {}).items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)
            except OSError:
                pass  # the sender gave up waiting (a timeout test)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with http_served(Handler) as url:
        receiver.url = url
        yield receiver


@contextmanager
def http_served(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threaded HTTP server on a free port of 127.0.0.1 with `handler`, for as long as the block runs: its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
