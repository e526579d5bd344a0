"""A stand-in for one vLLM replica: its OpenAI-compatible API, answers made up, time spent asleep, not computing.

    .venv/bin/python -m bench.stand_in_server --port 8201 [--token-seconds 0.03] [--tokens 32] [--max-sequences 32]

It answers GET /health and /v1/models, POST /v1/chat/completions (n=1; streamed with "stream": true),
/v1/load_lora_adapter and /v1/unload_lora_adapter with vLLM's status codes and body shapes. An answer has between
half and one and a half times --tokens tokens (fewer when max_tokens says so), drawn from its seed, so twins differ
and a seed repeats its answer; it is sent after --token-seconds per token. Like vLLM's --max-num-seqs, at most
--max-sequences answers are generated at once and the others wait for a slot, so one replica has a fixed capacity
(max_sequences / (tokens x token_seconds) answers a second) that more replicas add to.

The wait is a sleep, so the stand-in uses almost no CPU: on a small machine the sampling workers' own work, not the
model server's, is what gets measured (bench.scale). Each request has its own thread (ThreadingHTTPServer).
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WORDS = ("the", "a", "model", "answer", "pair", "vote", "prefers", "shorter", "longer", "because", "clearly", "kind")


class StandInServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many workers connect at once; the default backlog (5) would refuse some

    def __init__(self, port: int, *, token_seconds: float, tokens: int, max_sequences: int, model: str) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.token_seconds = token_seconds
        self.tokens = tokens
        self.slots = threading.BoundedSemaphore(max_sequences)
        self.served = {model}
        self.lock = threading.Lock()
        self.answers = 0
        self.generating_seconds = 0.0  # summed over answers: slots x time busy
        self.waiting_seconds = 0.0  # summed over answers: time spent waiting for a free slot

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that closed its connection mid-answer (a worker stopped) is nothing to report


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as vLLM's server does: the client's pool reuses connections
    server: StandInServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"object": "error", "message": message, "type": "BadRequestError", "code": status})

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, {})
        elif self.path == "/stats":  # the stand-in's own (vLLM has /metrics): how busy it was, for bench.scale
            with self.server.lock:
                stats = {
                    "answers": self.server.answers,
                    "generating_seconds": self.server.generating_seconds,
                    "waiting_seconds": self.server.waiting_seconds,
                }
            self._send(200, stats)
        elif self.path == "/v1/models":
            with self.server.lock:
                names = sorted(self.server.served)
            self._send(200, {"object": "list", "data": [{"id": name, "object": "model"} for name in names]})
        else:
            self._error(404, "Not Found")

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if self.path == "/v1/chat/completions":
            self._chat(body)
        elif self.path == "/v1/load_lora_adapter":
            with self.server.lock:
                loaded = body["lora_name"] in self.server.served
                self.server.served.add(body["lora_name"])
            if loaded:
                self._error(400, f"The lora adapter '{body['lora_name']}' has already been loaded.")
            else:
                self._send(200, {})
        elif self.path == "/v1/unload_lora_adapter":
            with self.server.lock:
                known = body["lora_name"] in self.server.served
                self.server.served.discard(body["lora_name"])
            if known:
                self._send(200, {})
            else:
                self._error(404, f"The lora adapter '{body['lora_name']}' cannot be found.")
        else:
            self._error(404, "Not Found")

    def _chat(self, body: dict[str, Any]) -> None:
        with self.server.lock:
            known = body.get("model") in self.server.served
        if not known:
            self._error(404, f"The model `{body.get('model')}` does not exist.")
            return
        seed = body.get("seed")
        draw = random.Random(seed)
        mean = self.server.tokens
        tokens = min(int(body.get("max_tokens") or mean * 2), draw.randint(max(1, mean // 2), mean * 3 // 2))
        text = " ".join(draw.choice(WORDS) for _ in range(tokens))
        if body.get("stream"):
            self._chat_streamed(body, text.split(" "))
            return
        with self._slot():
            time.sleep(tokens * self.server.token_seconds)
        self._send(
            200,
            {
                "id": f"chatcmpl-{seed}-{time.monotonic_ns()}",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}],
                "usage": _usage(body, tokens),
            },
        )

    @contextmanager
    def _slot(self) -> Iterator[None]:
        """A free sequence slot, as in vLLM's scheduler, held while the answer is generated; the answer is counted, with
        the time it waited for the slot and the time it held it."""
        asked = time.monotonic()
        with self.server.slots:
            slot_taken = time.monotonic()
            yield
        with self.server.lock:
            self.server.answers += 1
            self.server.generating_seconds += time.monotonic() - slot_taken
            self.server.waiting_seconds += slot_taken - asked

    def _chat_streamed(self, body: dict[str, Any], words: list[str]) -> None:
        """vLLM's streamed answer: a server-sent event per token, --token-seconds apart, the usage, then [DONE]. The
        answer waits for a sequence slot and is counted as one asked for whole is."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        answer_id = f"chatcmpl-{body.get('seed')}-{time.monotonic_ns()}"
        with self._slot():
            for number, word in enumerate(words):
                time.sleep(self.server.token_seconds)
                last = number == len(words) - 1
                piece = {"content": word if number == 0 else " " + word}
                choice = {"index": 0, "delta": piece, "finish_reason": "length" if last else None}
                chunk = {"id": answer_id, "model": body["model"], "choices": [choice]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
        final = {"id": answer_id, "model": body["model"], "choices": [], "usage": _usage(body, len(words))}
        self.wfile.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())


def _usage(body: dict[str, Any], completion_tokens: int) -> dict[str, int]:
    prompt_tokens = sum(len(str(message.get("content", ""))) for message in body.get("messages", [])) // 4
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-seconds", type=float, default=0.03, help="time to generate one token")
    parser.add_argument("--tokens", type=int, default=32, help="mean tokens an answer (half to 1.5 times this)")
    parser.add_argument("--max-sequences", type=int, default=32, help="answers generated at once (vLLM max-num-seqs)")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="the base model's served name")
    arguments = parser.parse_args()
    server = StandInServer(
        arguments.port,
        token_seconds=arguments.token_seconds,
        tokens=arguments.tokens,
        max_sequences=arguments.max_sequences,
        model=arguments.model,
    )
    print(f"stand-in model server on http://127.0.0.1:{arguments.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
