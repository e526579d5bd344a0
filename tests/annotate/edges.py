"""Stand-ins for the two edges a fast test cannot run: the training process and the vLLM server.

Both are real processes or sockets talking the real protocols (a launcher that `annotate/rounds/runner.py` runs as
it runs `python -m training`, an HTTP server answering vLLM's adapter endpoints), so the Django side runs unchanged.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SCRIPTED_TRAINER = '''#!{python}
"""Acts as `python -m training train|round`: writes what the real commands write, with scripted numbers."""
import json, os, sys
from pathlib import Path
arguments = sys.argv[sys.argv.index("training") + 1:]
command, options = arguments[0], dict(zip(arguments[1::2], arguments[2::2]))
if command in ("train", "round"):
    config = json.loads(Path(options["--config"]).read_text())
    output = Path(config["output_dir"])
    (output / "adapter").mkdir(parents=True, exist_ok=True)
    (output / "adapter" / "adapter_config.json").write_text(json.dumps({{"r": config["lora_rank"]}}))
    with (output / "metrics.jsonl").open("w") as metrics:
        for step in (1, 2):
            metrics.write(json.dumps({{"step": step, "max_steps": 2, "loss": 0.7 - step / 10}}) + "\\n")
if command == "round":
    def scored(accuracy):
        return {{"accuracy": accuracy, "accuracy_low": accuracy - 0.2, "accuracy_high": min(1.0, accuracy + 0.2),
                 "mean_margin": 0.1, "count": 4, "skipped": 0}}
    models = {{"candidate": scored(float(os.environ.get("SCRIPTED_ACCURACY", "0.75"))),
               "parent": scored(float(os.environ.get("SCRIPTED_PARENT_ACCURACY", "0.5")))}}
    seconds = {{"process": 4.0, "load": 1.5, "train": 1.25, "evaluate": 0.75}}  # as the real process reports them
    Path(options["--evaluation-output"]).write_text(json.dumps({{"reference": "base", "models": models,
                                                                 "seconds": seconds}}))
'''


def scripted_trainer(directory: Path) -> str:
    """Write the scripted trainer into `directory`; returns the TRAINING_LAUNCHER value that runs it."""
    path = directory / "scripted_trainer.py"
    path.write_text(SCRIPTED_TRAINER.format(python=sys.executable))
    path.chmod(0o755)
    return str(path)


class FakeModelServer:
    """What the fake vLLM server knows and is told to do."""

    def __init__(self, max_lora_rank: int = 16) -> None:
        self.max_lora_rank = max_lora_rank
        self.models: list[str] = ["base"]
        self.broken_adapters: set[str] = set()  # names whose loading it refuses, as vLLM refuses a missing adapter
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def handle(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.requests.append((path, body))
        if path == "/health":  # vLLM's: 200 once the model is loaded
            return 200, {}
        if path == "/v1/models":
            return 200, {"data": [{"id": name} for name in self.models]}
        if path == "/v1/load_lora_adapter":
            config_path = Path(body["lora_path"]) / "adapter_config.json"
            if body["lora_name"] in self.broken_adapters:
                return 400, {"message": f"No adapter found for {body['lora_path']}"}
            rank = json.loads(config_path.read_text())["r"] if config_path.is_file() else 0
            if rank > self.max_lora_rank:
                return 400, {"message": f"LoRA rank {rank} is greater than max_lora_rank {self.max_lora_rank}."}
            self.models.append(body["lora_name"])
            return 200, {}
        if path == "/v1/unload_lora_adapter":
            if body["lora_name"] not in self.models:
                return 404, {"message": "not found"}
            self.models.remove(body["lora_name"])
            return 200, {}
        return 404, {"message": "unknown path"}


class _BackloggedServer(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5: a refill's concurrent requests on a loaded machine overflowed it and
    # the client saw "connection reset by peer" (CI failed on it). A real server's backlog is in the hundreds.
    request_queue_size = 128
    daemon_threads = True


@contextmanager
def fake_model_server(server: FakeModelServer) -> Iterator[str]:
    """Serve `server` over HTTP on a free local port; yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            status, payload = server.handle(self.path, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    http = _BackloggedServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{http.server_address[1]}"
    finally:
        http.shutdown()
        http.server_close()


class ChattingModelServer(FakeModelServer):
    """The fake vLLM server, also answering chat completions: a trained adapter answers briefly, the base at length
    (so a simulated annotator who prefers shorter answers prefers the candidate). It refuses prompts containing
    `refuse`, as vLLM refuses one too long for its context."""

    refuse = ""

    def handle(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if path != "/v1/chat/completions":
            return super().handle(path, body)
        self.requests.append((path, body))
        if self.refuse and self.refuse in body["messages"][-1]["content"]:
            return 400, {"message": "This model's maximum context length is 2048 tokens."}
        if body["model"] not in self.models:
            return 404, {"message": f"The model `{body['model']}` does not exist."}
        seed = body["seed"]
        trained = "-round-" in body["model"]
        text = f"Brief {seed}." if trained else f"A long and winding answer that goes on, seed {seed}."
        return 200, {
            "id": f"chatcmpl-{seed}",
            "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": len(text.split())},
        }
