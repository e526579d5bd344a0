"""Start-up as `make run` does it: the workers start before a local vLLM has loaded its model, and a command run in
another shell must find the model server that `make run` started."""

from __future__ import annotations

import io
import json
import logging

import pytest
from django.core.cache import cache
from django.core.management import CommandError, call_command

from annotate import tasks
from annotate.models import Judgement

from .edges import ChattingModelServer, fake_model_server

pytestmark = pytest.mark.django_db


@pytest.fixture
def prompts(tmp_path):
    """Prompts imported as staff import them, for the refill to sample from."""
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Question {number}?"}) + "\n" for number in range(4)))
    call_command("import_prompts", str(path))


def test_a_refill_while_the_model_server_loads_says_so_in_one_line_without_a_traceback(
    serving_version, prompts, settings, caplog
):
    settings.VLLM_BASE_URL = "http://127.0.0.1:9"  # nothing listens yet: vLLM is still loading
    cache.clear()
    with caplog.at_level(logging.INFO):
        results = [tasks.pairs_refill.apply() for _ in range(3)]  # as the worker runs it, retries included

    assert [result.state for result in results] == ["SUCCESS"] * 3 and [r.get() for r in results] == [0, 0, 0]
    said = [record for record in caplog.records if "waiting for the model server" in record.getMessage()]
    assert len(said) == 1  # once, whatever the retries and refills meanwhile
    assert said[0].getMessage().startswith("waiting for the model server at http://127.0.0.1:9 (starting, about a")
    assert [record.getMessage() for record in caplog.records if record.exc_info] == []  # no traceback anywhere


@pytest.fixture
def shell_without_model_server_settings(monkeypatch, settings, tmp_path):
    """A new shell: nothing exported, so the settings' own default port (8100) is what it would use."""
    monkeypatch.delenv("VLLM_BASE_URL", raising=False)
    monkeypatch.delenv("VLLM_PORT", raising=False)
    settings.VAR_DIR = tmp_path
    settings.VLLM_BASE_URL = ""
    settings.VLLM_HOST, settings.VLLM_PORT = "127.0.0.1", 9  # nothing listens there
    return settings


def test_simulate_annotators_samples_from_the_server_make_run_recorded(
    serving_version, prompts, shell_without_model_server_settings, tmp_path
):
    server = ChattingModelServer()
    server.models = [serving_version.name]
    with fake_model_server(server) as url:
        (tmp_path / "model-server-url").write_text(url + "\n")  # what `VLLM_PORT=... make run` wrote
        call_command("simulate_annotators", "--prefer", "shorter", "--count", "2", "--sample", stdout=io.StringIO())

    assert Judgement.objects.filter(source=Judgement.Source.SIMULATED).count() == 2
    assert any(path == "/v1/chat/completions" for path, _ in server.requests)


def test_simulate_annotators_says_in_a_sentence_that_the_model_server_does_not_answer(
    serving_version, prompts, shell_without_model_server_settings, tmp_path
):
    (tmp_path / "model-server-url").write_text("http://127.0.0.1:9\n")  # `make run` stopped, or still loading

    with pytest.raises(CommandError) as refused:
        call_command("simulate_annotators", "--prefer", "shorter", "--count", "2", "--sample")
    assert str(refused.value).startswith("the model server at http://127.0.0.1:9 does not answer: start it with")
    assert Judgement.objects.count() == 0
