"""`python -m training prescore`: what a trainer scores while idle is what the round would compute, bit for bit, and
the round then reads it instead of scoring; the deadline holds and what was scored before it is kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from tests.training.samples import TINY_PAIRS, tiny_round_config
from training.config import cpu_multiplies_bf16
from training.data import write_pairs

REPO = Path(__file__).resolve().parents[2]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Both arithmetics where the CPU has bf16; fp32 alone where it has not (the config's default there)
ARITHMETIC = [False, True] if cpu_multiplies_bf16() else [False]


def training(*argv: str | Path | float) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "training", *map(str, argv)]
    return subprocess.run(command, cwd=REPO, env=ONE_THREAD, capture_output=True, text=True, timeout=600)


def config_file(directory: Path, model_dir: Path, **overrides: object) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    path.write_text(tiny_round_config(model_dir, directory / "out", **overrides).to_json())
    return path


def round_in(directory: Path, model_dir: Path, pairs: Path, cache: Path | None, **overrides: object) -> dict[str, Any]:
    config = config_file(directory, model_dir, **overrides)
    argv: list[str | Path] = ["round", "--config", config, "--data", pairs, "--heldout", pairs]
    argv += ["--evaluation-output", directory / "evaluation.json"]
    if cache is not None:
        argv += ["--reference-cache", cache]
    finished = training(*argv)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return dict(json.loads((directory / "evaluation.json").read_text()))


def prescore_in(directory: Path, model_dir: Path, pairs: Path, cache: Path, seconds: float, **overrides: object) -> Any:
    config = config_file(directory, model_dir, **overrides)
    report = directory / "prescore.json"
    finished = training("prescore", "--config", config, "--data", pairs, "--heldout", pairs,
                        "--reference-cache", cache, "--seconds", seconds, "--output", report)  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-3000:]
    return json.loads(report.read_text())


def adapter(directory: Path) -> dict[str, Any]:
    return load_file(directory / "out" / "adapter" / "adapter_model.safetensors")


@pytest.mark.parametrize("bf16", ARITHMETIC, ids=lambda bf16: "bf16" if bf16 else "fp32")
def test_a_round_after_prescoring_reads_what_it_would_compute_and_trains_the_same_adapter(
    tiny_model_dir: Path, tiny_pairs_path: Path, tmp_path: Path, bf16: bool
) -> None:
    cache = tmp_path / "reference.json"
    done = prescore_in(tmp_path / "idle", tiny_model_dir, tiny_pairs_path, cache, seconds=300, cpu_bf16=bf16)
    assert done["complete"] and done["scored"] == len(TINY_PAIRS) and done["heldout_scored"] == len(TINY_PAIRS)

    prescored = round_in(tmp_path / "prescored", tiny_model_dir, tiny_pairs_path, cache, cpu_bf16=bf16)
    fresh = round_in(tmp_path / "fresh", tiny_model_dir, tiny_pairs_path, None, cpu_bf16=bf16)

    # Nothing scored again: the training reference and the held-out base log-probs both came from the cache
    assert prescored["training_reference"] == {"hits": len(TINY_PAIRS), "misses": 0}
    assert (prescored["reference_cache"]["hits"], prescored["reference_cache"]["misses"]) == (len(TINY_PAIRS), 0)
    assert fresh["training_reference"] == {"hits": 0, "misses": len(TINY_PAIRS)}
    expected = adapter(tmp_path / "fresh")
    assert all(adapter(tmp_path / "prescored")[name].equal(expected[name]) for name in expected)  # bit for bit
    assert prescored["models"] == fresh["models"]


def test_a_round_on_a_parent_adapter_keys_its_reference_by_that_adapter(
    tiny_model_dir: Path, tiny_pairs_path: Path, tmp_path: Path
) -> None:
    """Round 2's reference is its parent: log-probs scored under round 1's base must not be taken for it."""
    cache = tmp_path / "reference.json"
    round_in(tmp_path / "one", tiny_model_dir, tiny_pairs_path, cache)
    parent = str(tmp_path / "one" / "out" / "adapter")

    second = round_in(tmp_path / "two", tiny_model_dir, tiny_pairs_path, cache, parent_adapter_dir=parent)
    assert second["training_reference"] == {"hits": 0, "misses": len(TINY_PAIRS)}
    assert second["reference_cache"]["hits"] == len(TINY_PAIRS)  # the held-out reference is the base: the same
    again = prescore_in(tmp_path / "idle", tiny_model_dir, tiny_pairs_path, cache, 300, parent_adapter_dir=parent)
    assert again["complete"] and again["scored"] == 0 and again["held"] == len(TINY_PAIRS)


def test_prescoring_stops_at_its_deadline_and_keeps_what_it_scored(tiny_model_dir: Path, tmp_path: Path) -> None:
    cache, pairs = tmp_path / "reference.json", tmp_path / "pairs.jsonl"
    write_pairs(TINY_PAIRS, pairs)
    cut = prescore_in(tmp_path / "cut", tiny_model_dir, pairs, cache, seconds=0.001)
    assert not cut["complete"] and cut["scored"] == 0  # the deadline passed while the trainer was built

    finished = prescore_in(tmp_path / "finished", tiny_model_dir, pairs, cache, seconds=300)
    assert finished["complete"] and finished["scored"] == len(TINY_PAIRS)
    write_pairs([*TINY_PAIRS, *TINY_PAIRS[:2]], pairs)  # the same pairs again and nothing new: all held
    assert prescore_in(tmp_path / "again", tiny_model_dir, pairs, cache, seconds=300)["scored"] == 0


def test_prescore_refuses_a_bad_deadline_and_missing_files_with_exit_2(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = config_file(tmp_path, tiny_model_dir)
    pairs = tmp_path / "pairs.jsonl"
    write_pairs(TINY_PAIRS, pairs)
    common: list[str | Path] = [
        "--config",
        config,
        "--reference-cache",
        tmp_path / "c.json",
        "--output",
        tmp_path / "r.json",
    ]
    refused = training("prescore", *common, "--data", pairs, "--seconds", "0")
    assert refused.returncode == 2 and "--seconds must be > 0" in refused.stderr
    missing = training("prescore", *common, "--data", tmp_path / "none.jsonl")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert not (tmp_path / "c.json").exists() and not (tmp_path / "r.json").exists()


def test_two_writers_of_one_cache_keep_each_others_entries(tmp_path: Path) -> None:
    """Two trainers on one host: each opened the file before the other saved; neither save loses the other's pairs."""
    from training.evaluate import ReferenceCache, TokenizedPair

    path = tmp_path / "reference.json"
    first, second = ReferenceCache(path), ReferenceCache(path)
    pairs = [TokenizedPair([1, 2], [3], [4]), TokenizedPair([1, 2], [5], [6])]
    assert first.scores_by("model", pairs[:1], 64, lambda todo: [(-1.0, -2.0)] * len(todo)) == [(-1.0, -2.0)]
    assert second.scores_by("model", pairs[1:], 64, lambda todo: [(-3.0, -4.0)] * len(todo)) == [(-3.0, -4.0)]

    reopened = ReferenceCache(path)
    assert reopened.scores_by("model", pairs, 64, lambda todo: []) == [(-1.0, -2.0), (-3.0, -4.0)]
    assert (reopened.hits, reopened.misses) == (2, 0)


def test_a_pass_stopped_part_way_keeps_the_pairs_it_scored(tmp_path: Path) -> None:
    from training.evaluate import ReferenceCache, TokenizedPair

    path = tmp_path / "reference.json"
    pairs = [TokenizedPair([1], [index], [index + 1]) for index in range(2, 6)]

    def two_then_stop(todo: list[TokenizedPair]) -> Any:
        yield (-1.0, -1.0)
        yield (-2.0, -2.0)
        raise TimeoutError("the deadline")

    with pytest.raises(TimeoutError):
        ReferenceCache(path).scores_by("model", pairs, 64, two_then_stop)
    again = ReferenceCache(path)
    scores = again.scores_by("model", pairs, 64, lambda todo: [(-9.0, -9.0)] * len(todo))
    assert scores == [(-1.0, -1.0), (-2.0, -2.0), (-9.0, -9.0), (-9.0, -9.0)] and again.misses == 2


def _clock(monkeypatch: pytest.MonkeyPatch, start: float = 1_000_000.0) -> list[float]:
    """training.evaluate's clock, moved by the test: `now[0] += seconds`."""
    import training.evaluate

    now = [start]
    monkeypatch.setattr(training.evaluate.time, "time", lambda: now[0])
    return now


def test_the_cache_keeps_the_models_used_last_and_drops_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each promotion brings a new parent: the file keeps the groups used last, not every parent ever trained from."""
    from training.evaluate import ReferenceCache, TokenizedPair

    now = _clock(monkeypatch)
    path = tmp_path / "reference.json"
    pairs = [TokenizedPair([1, 2], [3], [4]), TokenizedPair([1, 2], [5], [6])]
    for value, model in enumerate(("parent-1", "parent-2", "parent-3")):
        now[0] += 10
        ReferenceCache(path, keep_models=2).scores_by(model, pairs, 64, lambda todo, v=value: [(-v, -v)] * len(todo))

    stored = json.loads(path.read_text())
    assert sorted(stored["models"]) == ["parent-2", "parent-3"]
    reopened = ReferenceCache(path, keep_models=2)
    assert reopened.scores_by("parent-3", pairs, 64, lambda todo: []) == [(-2.0, -2.0)] * 2
    assert reopened.scores_by("parent-1", pairs, 64, lambda todo: [(-9.0, -9.0)] * len(todo)) == [(-9.0, -9.0)] * 2
    assert (reopened.hits, reopened.misses) == (2, 2)  # parent-1 was dropped: scored again


def test_a_model_only_read_counts_as_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The evaluation's base model is read every round and written rarely: a read marks it used, so it is kept."""
    from training.evaluate import ReferenceCache, TokenizedPair

    now = _clock(monkeypatch)
    path = tmp_path / "reference.json"
    pairs = [TokenizedPair([1], [2], [3])]
    ReferenceCache(path, keep_models=2).scores_by("base", pairs, 64, lambda todo: [(-1.0, -1.0)])
    now[0] += 10
    ReferenceCache(path, keep_models=2).scores_by("parent-1", pairs, 64, lambda todo: [(-2.0, -2.0)])
    now[0] += ReferenceCache.USED_SAVE_SECONDS + 1
    assert ReferenceCache(path, keep_models=2).scores_by("base", pairs, 64, lambda todo: []) == [(-1.0, -1.0)]
    now[0] += 10
    ReferenceCache(path, keep_models=2).scores_by("parent-2", pairs, 64, lambda todo: [(-3.0, -3.0)])

    assert sorted(json.loads(path.read_text())["models"]) == ["base", "parent-2"]


def test_a_cache_of_the_earlier_layout_is_scored_again_and_replaced(tmp_path: Path) -> None:
    from training.evaluate import ReferenceCache, TokenizedPair

    path = tmp_path / "reference.json"
    pairs = [TokenizedPair([1], [2], [3])]
    path.write_text(json.dumps({"entries": {pairs[0].cache_key("base", 64): [-5.0, -5.0]}}))
    cache = ReferenceCache(path)
    assert cache.scores_by("base", pairs, 64, lambda todo: [(-1.0, -1.0)]) == [(-1.0, -1.0)] and cache.misses == 1
    assert list(json.loads(path.read_text())) == ["models"]

    path.write_text(json.dumps({"models": {"base": {"entries": []}}}))
    with pytest.raises(ValueError, match='must be a JSON object with a "models" object'):
        ReferenceCache(path)


def test_a_pass_answers_even_when_its_group_was_pruned_by_a_newer_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another trainer saved a newer group while this one scored: this pass's save keeps only the newer one (one group
    kept here), and still answers with what it scored."""
    from training.evaluate import ReferenceCache, TokenizedPair

    now = _clock(monkeypatch)
    path = tmp_path / "reference.json"
    pairs = [TokenizedPair([1], [2], [3])]

    def meanwhile(todo: list[TokenizedPair]) -> list[tuple[float, float]]:
        now[0] += 10
        ReferenceCache(path, keep_models=1).scores_by("newer", pairs, 64, lambda rest: [(-2.0, -2.0)])
        return [(-1.0, -1.0)]

    assert ReferenceCache(path, keep_models=1).scores_by("older", pairs, 64, meanwhile) == [(-1.0, -1.0)]
    assert list(json.loads(path.read_text())["models"]) == ["newer"]
