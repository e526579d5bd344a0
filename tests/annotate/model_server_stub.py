"""A tiny local HTTP server that answers like vLLM's OpenAI-compatible API, for tests of the HTTP edge.

It runs the real client (sampling.generation) over a real socket: status codes, error bodies and timeouts are what
the client sees from vLLM, only the answers are made up (deterministic in the seed, so twins differ).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# vLLM's wording (0.32, CPU build) for a prompt over the model's context, in its error body's shape.
CONTEXT_ERROR = (
    "This model's maximum context length is 8192 tokens. However, your prompt contains at least {tokens} input "
    "tokens, which exceeds this limit even without any output tokens. Please reduce the length of the input prompt."
)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver listens with a backlog of 5: a refill's concurrent requests on a loaded machine overflowed it and
    # the client saw "connection reset by peer" (CI failed on it). A real server's backlog is in the hundreds.
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (a timeout test) closed its socket: nothing to report


class ModelServerStub:
    def __init__(self, *, served_models: tuple[str, ...], max_prompt_characters: int = 100_000) -> None:
        self.served_models = set(served_models)
        self.max_prompt_characters = max_prompt_characters
        self.failing_prompts: set[str] = set()  # answered 500, like an engine error on one request
        self.slow_prompts: dict[str, float] = {}  # prompt -> seconds to wait before answering
        self.before_answer: dict[str, Callable[[], None]] = {}  # prompt -> called (in the server thread) first
        self.requests: list[dict[str, Any]] = []
        self.answer_as: str | None = None  # the model name its answers claim (a misrouted request), if not the asked
        # Seconds the server takes per word of an answer: a streamed answer sends each word as it is written; one asked
        # for whole is sent, like vLLM's, once its last word is. And the piece after which a stream's connection is cut
        # (the server died mid-stream), if any.
        self.stream_piece_seconds = 0.0
        self.stream_cut_after: int | None = None
        self.stream_error: str | None = None  # at the cut, send this as vLLM's error event and [DONE] instead
        self.ignore_stream = False  # answer a streamed request whole, in JSON, as some OpenAI-compatible servers do
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def prompts_sent(self) -> list[str]:
        with self._lock:
            return [body["messages"][-1]["content"] for body in self.requests]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _error(self, status: int, kind: str, message: str) -> None:
                self._send(status, {"error": {"message": message, "type": kind, "param": None, "code": status}})

            def _stream(self, body: dict[str, Any], text: str) -> None:
                """The answer as vLLM streams it: one server-sent event per word, then the usage, then [DONE]."""
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                model = stub.answer_as or body["model"]
                words = text.split(" ")
                for number, word in enumerate(words):
                    if stub.stream_cut_after is not None and number >= stub.stream_cut_after:
                        if stub.stream_error is not None:
                            failure = {"message": stub.stream_error, "type": "InternalServerError", "code": 500}
                            error = {"error": failure}
                            self.wfile.write(f"data: {json.dumps(error)}\n\ndata: [DONE]\n\n".encode())
                            return
                        self.wfile.flush()
                        self.connection.shutdown(2)  # the server went away: no finish, no [DONE]
                        return
                    piece = word if number == 0 else " " + word
                    last = number == len(words) - 1
                    choice = {"index": 0, "delta": {"content": piece}, "finish_reason": "stop" if last else None}
                    chunk = {"id": f"chatcmpl-{body['seed']}", "model": model, "choices": [choice]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                    time.sleep(stub.stream_piece_seconds)
                usage = {"prompt_tokens": 10, "completion_tokens": len(words)}
                final = {"id": f"chatcmpl-{body['seed']}", "model": model, "choices": [], "usage": usage}
                self.wfile.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())

            def do_GET(self) -> None:
                if self.path == "/health":
                    self._send(200, {})
                elif self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": name} for name in sorted(stub.served_models)]})
                else:
                    self._error(404, "NotFoundError", "Not Found")

            def do_POST(self) -> None:
                if self.path != "/v1/chat/completions":
                    self._error(404, "NotFoundError", "Not Found")
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub._lock:
                    stub.requests.append(body)
                content = body["messages"][-1]["content"]
                if content in stub.before_answer:
                    stub.before_answer[content]()
                if content in stub.slow_prompts:
                    time.sleep(stub.slow_prompts[content])
                if body["model"] not in stub.served_models:
                    self._error(404, "NotFoundError", f"The model `{body['model']}` does not exist. Valid aliases: ...")
                elif len(content) > stub.max_prompt_characters:
                    self._error(400, "BadRequestError", CONTEXT_ERROR.format(tokens=len(content) // 4))
                elif content in stub.failing_prompts:
                    self._error(500, "InternalServerError", "EngineCore encountered an issue.")
                elif body.get("stream") and not stub.ignore_stream:
                    self._stream(body, f"Answer to {content[:40]!r} with seed {body['seed']}.")
                else:
                    text = f"Answer to {content[:40]!r} with seed {body['seed']}."
                    time.sleep(stub.stream_piece_seconds * len(text.split(" ")))
                    self._send(
                        200,
                        {
                            "id": f"chatcmpl-{body['seed']}",
                            "object": "chat.completion",
                            "model": stub.answer_as or body["model"],
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": text},
                                    "finish_reason": "stop",
                                }
                            ],
                            "usage": {"prompt_tokens": len(content) // 4 + 5, "completion_tokens": len(text) // 4},
                        },
                    )

        return Handler

    @contextmanager
    def running(self) -> Iterator[ModelServerStub]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join(timeout=5)
