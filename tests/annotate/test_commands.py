import json

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from annotate.models import ModelVersion, Prompt

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def test_seed_demo_is_idempotent_and_uses_the_given_password(monkeypatch, settings, tmp_path, capsys):
    settings.VAR_DIR = tmp_path
    monkeypatch.setenv("PAIRLOOP_DEMO_PASSWORD", "demo-pass-123")

    call_command("seed_demo")
    call_command("seed_demo")

    output = capsys.readouterr().out
    assert "login: admin / demo-pass-123" in output and "login: annotator / demo-pass-123" in output
    prompts = Prompt.objects.all()
    assert prompts.count() == 40
    assert any(len(prompt.messages) > 1 for prompt in prompts)  # some are multi-turn
    assert all(prompt.messages[-1]["role"] == "user" for prompt in prompts)
    users = get_user_model().objects.order_by("username")
    assert [(user.username, user.is_staff) for user in users] == [("admin", True), ("annotator", False)]
    assert all(user.check_password("demo-pass-123") for user in users)
    serving = ModelVersion.objects.get(status=ModelVersion.Status.SERVING)
    assert serving.name == settings.SERVED_MODEL_NAME


def test_seed_demo_generates_passwords_once_and_prints_them_again(monkeypatch, settings, tmp_path, capsys):
    settings.VAR_DIR = tmp_path
    monkeypatch.delenv("PAIRLOOP_DEMO_PASSWORD", raising=False)

    call_command("seed_demo")
    first = capsys.readouterr().out
    call_command("seed_demo")
    second = capsys.readouterr().out

    saved = json.loads((tmp_path / "demo-credentials.json").read_text())
    assert (tmp_path / "demo-credentials.json").stat().st_mode & 0o077 == 0
    assert f"login: annotator / {saved['annotator']}" in first
    assert f"login: annotator / {saved['annotator']}" in second
    assert get_user_model().objects.get(username="annotator").check_password(saved["annotator"])


def test_serve_model_command_line(settings, capsys):
    settings.VLLM_PORT = 8765
    settings.VLLM_EXTRA_ARGS = "--max-model-len 2048"
    settings.VLLM_MAX_LORAS = 3  # the scheduler keeps within what the server was started with
    call_command("serve_model", "--print")
    command = capsys.readouterr().out
    assert "vllm.entrypoints.openai.api_server" in command
    assert f"--served-model-name {settings.SERVED_MODEL_NAME}" in command
    assert "--max-loras 3" in command
    assert "--port 8765" in command and "--enable-lora" in command and command.strip().endswith("--max-model-len 2048")
