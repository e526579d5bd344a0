"""The adapter store: a round's adapter is published where every model server reads it, never half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from annotate.models import ModelVersion
from annotate.rounds.adapters import PARTIAL_PREFIX, adapter_publish, adapter_store_path
from annotate.sampling.generation import client_from_settings

from .conftest import run_round


def _adapter(directory: Path, rank: int = 8, weights: bytes = b"weights") -> Path:
    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text(json.dumps({"r": rank}))
    (directory / "adapter_model.safetensors").write_bytes(weights)
    return directory


def test_publishing_copies_the_adapter_under_its_name(settings, tmp_path):
    settings.ADAPTER_STORE_DIR = tmp_path / "store"
    source = _adapter(tmp_path / "trainer" / "adapter")

    published = adapter_publish(source=source, name="policy-round-3")

    assert published == tmp_path / "store" / "policy-round-3" == adapter_store_path("policy-round-3")
    assert (published / "adapter_model.safetensors").read_bytes() == b"weights"
    assert sorted(path.name for path in (tmp_path / "store").iterdir()) == ["policy-round-3"]


def test_publishing_again_replaces_the_whole_copy_and_clears_a_killed_copy(settings, tmp_path):
    settings.ADAPTER_STORE_DIR = tmp_path / "store"
    adapter_publish(source=_adapter(tmp_path / "first"), name="policy-round-3")
    (tmp_path / "store" / "policy-round-3" / "left-over.bin").write_bytes(b"old")
    # What a trainer killed in the middle of a copy leaves behind: a hidden partial directory, never the name.
    (tmp_path / "store" / f"{PARTIAL_PREFIX}policy-round-3-dead").mkdir()

    published = adapter_publish(source=_adapter(tmp_path / "second", weights=b"retrained"), name="policy-round-3")

    assert sorted(path.name for path in published.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert (published / "adapter_model.safetensors").read_bytes() == b"retrained"
    assert sorted(path.name for path in (tmp_path / "store").iterdir()) == ["policy-round-3"]


@pytest.mark.parametrize("name", ["", ".hidden", "../escape", "a/b"])
def test_a_name_that_is_not_one_directory_in_the_store_is_refused(settings, tmp_path, name):
    settings.ADAPTER_STORE_DIR = tmp_path / "store"
    with pytest.raises(ValueError):
        adapter_publish(source=_adapter(tmp_path / "adapter"), name=name)
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def test_a_directory_without_an_adapter_is_not_published(settings, tmp_path):
    settings.ADAPTER_STORE_DIR = tmp_path / "store"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        adapter_publish(source=tmp_path / "empty", name="policy-round-1")
    assert not (tmp_path / "store" / "policy-round-1").exists()


@pytest.mark.django_db
def test_a_rounds_adapter_is_served_from_the_store_not_the_trainers_disk(loop, model_server):
    training_round = run_round()

    version = training_round.result_version
    assert version.status == ModelVersion.Status.SERVING
    store = Path(loop.ADAPTER_STORE_DIR)
    assert Path(version.adapter_path) == store / version.name
    loads = [body for path, body in model_server.requests if path == "/v1/load_lora_adapter"]
    assert [(body["lora_name"], body["lora_path"]) for body in loads] == [(version.name, str(store / version.name))]
    # The trainer's own disk may go (another host, a pod restarted): a replica that restarts loads it again.
    shutil.rmtree(Path(loop.ROUND_DIR))
    model_server.models.remove(version.name)
    assert version.ensure_loaded(client_from_settings())
    assert version.name in model_server.models
