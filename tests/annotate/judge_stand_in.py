"""A stand-in AI judge for tests: a threaded http.server on 127.0.0.1 that answers OpenAI chat completions as each
test asks. "gold" prefers the answer that says "correct" (as the tests' gold pairs and people do); "first" always
picks the first answer shown (a judge that flips with the order); "contrary" prefers the other answer; "garbage",
"huge" (10 MB), "hang" (never answers in time) and "status" (500) are the failures a judge can show."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.annotate.webhook_receiver import http_served


@dataclass
class StandIn:
    url: str = ""
    mode: str = "gold"
    confidence: float = 0.95
    requests: list[dict[str, object]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


def _choice(prompt: str, mode: str) -> str:
    first = prompt.partition("Answer 1:")[2].partition("Answer 2:")[0]
    first_is_correct = "correct" in first
    if mode == "first":
        return "1"
    if mode == "contrary":
        return "2" if first_is_correct else "1"
    return "1" if first_is_correct else "2"


@contextmanager
def stand_in_judge() -> Iterator[StandIn]:
    stand_in = StandIn()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
            stand_in.requests.append(body)
            stand_in.headers.append({name.lower(): value for name, value in self.headers.items()})
            mode = stand_in.mode
            if mode == "hang":
                time.sleep(3)
            if mode == "status":
                self._send(500, b'{"error": "overloaded"}')
                return
            if mode == "huge":
                self._send(200, b"{" + b" " * (10 * 1024 * 1024) + b"}")
                return
            if mode == "garbage":
                content = "I think both answers have merits \x00 and I cannot decide."
            else:
                choice = _choice(body["messages"][-1]["content"], mode)
                content = json.dumps({"choice": choice, "confidence": stand_in.confidence})
            message = {"role": "assistant", "content": content}
            answer = {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": message}]}
            self._send(200, json.dumps(answer).encode())

        def _send(self, status: int, body: bytes) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the app stopped reading, as it should for a reply too large

        def log_message(self, *args: object) -> None:
            pass

    with http_served(Handler) as url:
        stand_in.url = f"{url}/v1"
        yield stand_in
