from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.samples import REPO, TINY_PAIRS
from training.__main__ import main


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(args, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300, check=False)


def write_config(path: Path, **values: object) -> Path:
    path.write_text(json.dumps(values))
    return path


def test_train_with_a_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["train", "--config", str(tmp_path / "nope.json"), "--data", str(tmp_path / "pairs.jsonl")])

    assert status == 2
    assert f"config file {tmp_path / 'nope.json'} does not exist" in capsys.readouterr().err


def test_train_with_an_unknown_config_field_exits_2(
    tmp_path: Path, tiny_pairs_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "config.json", base_model_dir="/m", output_dir=str(tmp_path / "out"), lr=0.1)

    status = main(["train", "--config", str(config), "--data", str(tiny_pairs_path)])

    assert status == 2
    assert "unknown RoundConfig field(s) ['lr']" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_evaluate_with_bad_pairs_names_the_line(
    tmp_path: Path, base_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "heldout.jsonl"
    data.write_text(json.dumps(TINY_PAIRS[0]) + "\nnot json\n")
    output = tmp_path / "eval.json"

    status = main(
        ["evaluate", "--model", str(base_model_dir), "--data", str(data), "--beta", "0.1", "--output", str(output)]
    )

    assert status == 2
    assert f"{data}:2: not valid JSON" in capsys.readouterr().err
    assert not output.exists()


def test_evaluate_with_a_directory_that_is_no_adapter_exits_2(
    tmp_path: Path, base_model_dir: Path, tiny_pairs_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["evaluate", "--model", str(base_model_dir), "--adapter", str(tmp_path), "--data", str(tiny_pairs_path)]

    status = main([*arguments, "--beta", "0.1", "--output", str(tmp_path / "eval.json")])

    assert status == 2
    assert f"adapter {tmp_path} holds no adapter_config.json" in capsys.readouterr().err


def test_missing_arguments_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--model", "/m"])

    assert exit_info.value.code == 2
    assert "the following arguments are required: --data, --beta, --output" in capsys.readouterr().err


@pytest.mark.slow
def test_train_under_accelerate_launch_then_evaluate(
    base_model_dir: Path, tiny_pairs_path: Path, tmp_path: Path
) -> None:
    output_dir = tmp_path / "round"
    config = write_config(
        tmp_path / "config.json",
        base_model_dir=str(base_model_dir),
        output_dir=str(output_dir),
        max_length=64,
        batch_size=2,
        max_steps=1,
    )

    trained = run_module(
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
        "-m", "training", "train", "--config", str(config), "--data", str(tiny_pairs_path),
    )  # fmt: skip

    assert trained.returncode == 0, trained.stderr[-3000:]
    assert f"trained 1 steps on {len(TINY_PAIRS)} pairs" in trained.stdout
    assert json.loads((output_dir / "result.json").read_text())["steps"] == 1
    assert (output_dir / "adapter" / "adapter_model.safetensors").is_file()
    evaluated = run_module(
        sys.executable, "-m", "training", "evaluate", "--model", str(base_model_dir),
        "--adapter", str(output_dir / "adapter"), "--data", str(tiny_pairs_path),
        "--beta", "0.1", "--max-length", "64", "--output", str(tmp_path / "eval.json"),
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "accuracy" in evaluated.stdout
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["count"] == len(TINY_PAIRS) and report["skipped"] == 0
    assert 0 <= report["accuracy"] <= 1 and report["beta"] == 0.1
    assert report["adapter"] == str(output_dir / "adapter") and report["reference_adapter"] is None


def test_round_trains_then_scores_candidate_and_parent_against_the_base(
    tiny_model_dir: Path, tiny_pairs_path: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "reference-cache.json"
    adapters = []
    reports = []
    for number in (1, 2):
        output_dir = tmp_path / f"round-{number}"
        config = write_config(
            tmp_path / f"config-{number}.json",
            base_model_dir=str(tiny_model_dir),
            output_dir=str(output_dir),
            parent_adapter_dir=adapters[-1] if adapters else None,
            max_length=64,
            batch_size=2,
            max_steps=2,
            learning_rate=1e-2,
        )
        evaluation = tmp_path / f"compare-{number}.json"
        arguments = ["round", "--config", str(config), "--data", str(tiny_pairs_path)]
        arguments += ["--heldout", str(tiny_pairs_path), "--evaluation-output", str(evaluation)]

        assert main([*arguments, "--reference-cache", str(cache)]) == 0

        assert json.loads((output_dir / "result.json").read_text())["steps"] == 2
        adapters.append(str(output_dir / "adapter"))
        reports.append(json.loads(evaluation.read_text()))

    first, second = reports
    for report in reports:  # the process says where its time went; the phases fit inside its wall time
        seconds = report["seconds"]
        assert set(seconds) == {"process", "load", "train", "evaluate"}
        assert all(seconds[phase] > 0 for phase in ("load", "train", "evaluate"))
        assert seconds["load"] + seconds["train"] + seconds["evaluate"] <= seconds["process"] + 0.2
    assert first["models"]["parent"]["accuracy"] == 0.5 and first["models"]["parent"]["mean_margin"] == 0
    assert first["reference_cache"]["misses"] == len(TINY_PAIRS)
    assert (second["reference_cache"]["hits"], second["reference_cache"]["misses"]) == (len(TINY_PAIRS), 0)
    # Round 2's parent, scored from TRL's frozen copy inside the trained model, is round 1's candidate exactly
    assert second["models"]["parent"]["mean_margin"] == pytest.approx(first["models"]["candidate"]["mean_margin"])
    assert second["models"]["parent"]["accuracy"] == first["models"]["candidate"]["accuracy"]
    assert second["models"]["candidate"]["mean_margin"] != pytest.approx(second["models"]["parent"]["mean_margin"])
    compared = tmp_path / "compare.json"
    command = ["compare", "--model", str(tiny_model_dir), "--candidate", adapters[1], "--parent", adapters[0]]
    command += ["--data", str(tiny_pairs_path), "--beta", "0.1", "--max-length", "64", "--output", str(compared)]
    assert main([*command, "--reference-cache", str(cache)]) == 0
    separately = json.loads(compared.read_text())["models"]
    for name in ("candidate", "parent"):
        assert separately[name]["accuracy"] == second["models"][name]["accuracy"]
        assert separately[name]["mean_margin"] == pytest.approx(second["models"][name]["mean_margin"], abs=1e-5)


def test_round_with_bad_heldout_pairs_trains_nothing(
    tiny_model_dir: Path, tiny_pairs_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path / "config.json", base_model_dir=str(tiny_model_dir), output_dir=str(tmp_path / "out")
    )
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text('{"prompt": "Hi"}\n')
    arguments = ["round", "--config", str(config), "--data", str(tiny_pairs_path), "--heldout", str(heldout)]

    status = main([*arguments, "--evaluation-output", str(tmp_path / "compare.json")])

    assert status == 2
    assert f"{heldout}:1: missing key(s) ['chosen', 'rejected']" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
