from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

from tests.training.samples import TINY_PAIRS, pair
from training.__main__ import main
from training.data import PreferenceRow, write_pairs
from training.dpo import TrainResult
from training.evaluate import (
    EvalResult,
    PairLogprobs,
    ReferenceCache,
    active_adapter,
    compare_against_base,
    evaluate_pairs,
    implicit_reward_accuracy,
    load_model,
    model_cache_key,
    pair_logprobs,
    reward_accuracy,
    score_pairs,
    tokenize_pair,
    tokenize_rows,
)
from training.stats import wilson_interval

# The tiny pairs, plus one whose prompt alone fills MAX_LENGTH: TRL drops it, and so do we.
LONG_PROMPT = pair("Please " * 60 + "answer.", "Yes.", "No.")
MAX_LENGTH = 40  # cuts the answers of the pairs with the longest prompts
BETA = 0.5


def random_adapter(model_dir: Path, adapter_dir: Path, seed: int) -> Path:
    """A LoRA adapter with random (not zero) weights on the tiny model, so its rewards differ from the base's."""
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, lora_dropout=0.0)
    get_peft_model(base, config).save_pretrained(adapter_dir)
    return adapter_dir


def naive_logprob(model: torch.nn.Module, ids: list[int], answer_start: int) -> float:
    """log pi(answer | prompt) from the full-vocabulary logits, one sequence, no batching: an independent check."""
    logits = model(input_ids=torch.tensor([ids])).logits[0].float()  # [T, V]
    log_probs = torch.log_softmax(logits[:-1], dim=-1)  # position t predicts token t + 1
    targets = torch.tensor(ids[1:])
    picked = log_probs[torch.arange(len(ids) - 1), targets]
    return float(picked[answer_start - 1 :].sum())


def test_reward_accuracy_counts_a_tie_as_half() -> None:
    result = reward_accuracy([1.0, 0.2, 0.5, -1.0], [0.5, 0.3, 0.5, -2.0])

    assert (result.accuracy, result.count) == (2.5 / 4, 4)
    assert result.mean_margin == pytest.approx((0.5 - 0.1 + 0 + 1) / 4)
    assert (result.accuracy_low, result.accuracy_high) == pytest.approx(wilson_interval(2.5, 4))


def test_reward_accuracy_refuses_nothing_to_score() -> None:
    with pytest.raises(ValueError, match="no pair to score"):
        reward_accuracy([], [])


def test_evaluate_pairs_is_beta_times_the_log_ratio() -> None:
    policy = PairLogprobs(chosen=[-1.0, -2.0, -3.0, -1.0], rejected=[-2.0, -2.0, -1.0, -3.0], kept=[0, 1, 3, 4])
    reference = PairLogprobs(chosen=[-1.5, -2.0, -2.0, -2.0], rejected=[-1.5, -2.0, -2.0, -2.0], kept=[0, 1, 3, 4])

    result = evaluate_pairs(policy, reference, beta=0.5, total_rows=5)

    # rewards chosen (0.25, 0, -0.5, 0.5), rejected (-0.25, 0, 0.5, -0.5): margins 0.5, 0, -1, 1
    assert result.accuracy == 2.5 / 4
    assert result.mean_margin == pytest.approx(0.5 / 4)
    assert (result.count, result.skipped) == (4, 1)


def test_evaluate_pairs_refuses_mismatched_pairs() -> None:
    with pytest.raises(ValueError, match="different pairs"):
        evaluate_pairs(PairLogprobs([0.0], [0.0], [0]), PairLogprobs([0.0], [0.0], [1]), beta=0.1, total_rows=2)


def test_log_probs_match_the_full_logits_one_sequence_at_a_time(tiny_model_dir: Path, tmp_path: Path) -> None:
    adapter = random_adapter(tiny_model_dir, tmp_path / "adapter", seed=3)
    model, tokenizer = load_model(tiny_model_dir, adapter)
    rows = [*TINY_PAIRS, LONG_PROMPT]

    batched = pair_logprobs(model, tokenizer, rows, MAX_LENGTH, batch_size=4)

    assert batched.kept == list(range(len(TINY_PAIRS)))  # the long prompt fills max_length
    cut_answers = 0
    for index, row in enumerate(TINY_PAIRS):
        tokens = tokenize_pair(tokenizer, row)
        for answer_ids, score in (
            (tokens.chosen_ids, batched.chosen[index]),
            (tokens.rejected_ids, batched.rejected[index]),
        ):
            ids = (tokens.prompt_ids + answer_ids)[:MAX_LENGTH]
            cut_answers += len(tokens.prompt_ids + answer_ids) > MAX_LENGTH
            with torch.inference_mode():
                expected = naive_logprob(model, ids, len(tokens.prompt_ids))
            assert score == pytest.approx(expected, abs=1e-4)
    assert cut_answers > 0  # the truncation was exercised


def test_rewards_agree_with_dpo_trainer_evaluate(tiny_model_dir: Path, tmp_path: Path) -> None:
    """TRL's own eval_rewards/accuracies and eval_rewards/margins on the same model, adapter and pairs."""
    rows = [*TINY_PAIRS, LONG_PROMPT]
    torch.manual_seed(5)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, lora_dropout=0.0)
    arguments = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        beta=BETA,
        max_length=MAX_LENGTH,
        per_device_eval_batch_size=3,  # two equal batches of the six kept pairs: TRL's mean of batch means is exact
        bf16=False,  # TRL's default asks for bf16, which this CPU-only torch refuses
        report_to="none",
        disable_tqdm=True,
    )
    trainer = DPOTrainer(
        model=model,
        args=arguments,
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
        peft_config=lora,  # TRL's reference is then the base model (adapter disabled), as ours
    )
    trl_metrics = trainer.evaluate()
    trainer.model.save_pretrained(str(tmp_path / "adapter"))

    ours = implicit_reward_accuracy(tiny_model_dir, tmp_path / "adapter", None, rows, BETA, MAX_LENGTH, batch_size=4)

    assert (ours.count, ours.skipped) == (len(TINY_PAIRS), 1)
    margins = [abs(margin) for margin in _margins(tiny_model_dir, tmp_path / "adapter", TINY_PAIRS)]
    assert min(margins) > 1e-4  # no tie, so TRL's tie-as-loss and our tie-as-half count the same
    assert ours.accuracy == pytest.approx(trl_metrics["eval_rewards/accuracies"], abs=1e-6)
    assert ours.mean_margin == pytest.approx(trl_metrics["eval_rewards/margins"], rel=1e-3, abs=1e-6)
    assert ours.mean_margin != 0


def _margins(model_dir: Path, adapter: Path, rows: list[PreferenceRow]) -> list[float]:
    model, tokenizer = load_model(model_dir, adapter)
    cache = ReferenceCache(None)
    pairs, _ = tokenize_rows(tokenizer, rows, MAX_LENGTH)
    with active_adapter(model, None):
        reference = cache.scores(model, "x", pairs, MAX_LENGTH, 4, tokenizer.pad_token_id)
    with active_adapter(model, "policy"):
        policy = score_pairs(model, pairs, MAX_LENGTH, 4, tokenizer.pad_token_id)
    return [BETA * ((p[0] - r[0]) - (p[1] - r[1])) for p, r in zip(policy, reference, strict=True)]


def test_compare_scores_candidate_and_parent_against_the_base_and_reuses_the_cache(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    candidate = random_adapter(tiny_model_dir, tmp_path / "candidate", seed=1)
    parent = random_adapter(tiny_model_dir, tmp_path / "parent", seed=2)
    model, tokenizer = load_model(tiny_model_dir, named_adapters={"candidate": candidate, "parent": parent})
    cache_path = tmp_path / "cache.json"
    policies = {"candidate": "candidate", "parent": "parent", "base": None}
    rows = [*TINY_PAIRS, LONG_PROMPT]

    key = model_cache_key(tiny_model_dir)

    first = compare_against_base(model, tokenizer, key, rows, policies, BETA, MAX_LENGTH, 4, ReferenceCache(cache_path))
    cache = ReferenceCache(cache_path)
    again = compare_against_base(model, tokenizer, key, rows, policies, BETA, MAX_LENGTH, 4, cache)

    assert (cache.hits, cache.misses) == (len(TINY_PAIRS), 0)  # the second run computed no base log-probs
    assert again == first
    assert first["base"] == EvalResult(0.5, 0.0, 6, 1, *wilson_interval(3, 6))
    for name, adapter in (("candidate", candidate), ("parent", parent)):
        alone = implicit_reward_accuracy(tiny_model_dir, adapter, None, rows, BETA, MAX_LENGTH, batch_size=2)
        assert first[name].accuracy == alone.accuracy
        assert first[name].mean_margin == pytest.approx(alone.mean_margin, abs=1e-5)
    assert first["candidate"].mean_margin != pytest.approx(first["parent"].mean_margin, abs=1e-6)
    # another max_length is another key: nothing is reused across it
    other = ReferenceCache(cache_path)
    compare_against_base(model, tokenizer, key, rows, policies, BETA, 48, 4, other)
    assert (other.hits, other.misses) == (0, len(TINY_PAIRS))


def test_compare_command_writes_both_models_with_intervals(tiny_model_dir: Path, tmp_path: Path) -> None:
    candidate = random_adapter(tiny_model_dir, tmp_path / "candidate", seed=1)
    data = tmp_path / "heldout.jsonl"
    write_pairs(TINY_PAIRS, data)
    output, cache = tmp_path / "compare.json", tmp_path / "cache.json"
    arguments = ["compare", "--model", str(tiny_model_dir), "--candidate", str(candidate), "--data", str(data)]
    arguments += ["--beta", "0.5", "--output", str(output), "--max-length", "40", "--reference-cache", str(cache)]

    assert main(arguments) == 0
    first = json.loads(output.read_text())
    assert main(arguments) == 0
    second = json.loads(output.read_text())

    assert set(first["models"]) == {"candidate", "parent"} and first["reference"] == "base"
    assert first["models"]["parent"]["accuracy"] == 0.5  # no --parent: the parent is the base model itself
    candidate_result = first["models"]["candidate"]
    assert candidate_result["count"] == len(TINY_PAIRS)
    assert candidate_result["accuracy_low"] <= candidate_result["accuracy"] <= candidate_result["accuracy_high"]
    assert first["reference_cache"]["misses"] == len(TINY_PAIRS)
    assert (second["reference_cache"]["hits"], second["reference_cache"]["misses"]) == (len(TINY_PAIRS), 0)
    assert second["models"] == first["models"]


def test_a_corrupt_reference_cache_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    path.write_text("{not json")

    with pytest.raises(ValueError, match=f"reference cache {path} is not valid JSON"):
        ReferenceCache(path)


@pytest.mark.slow
def test_base_model_against_itself_is_chance(base_model_dir: Path) -> None:
    result = implicit_reward_accuracy(base_model_dir, None, None, TINY_PAIRS, beta=0.1, max_length=64, batch_size=4)

    assert (result.accuracy, result.mean_margin, result.count, result.skipped) == (0.5, 0.0, len(TINY_PAIRS), 0)


@pytest.mark.slow
def test_trained_adapter_prefers_what_it_was_trained_to_prefer(base_model_dir: Path, round_one: TrainResult) -> None:
    """Three fp32 steps (round_one, seed 0) on the six pairs make the adapter prefer the chosen answer of every one
    of them, scored against the base model, with a mean implicit-reward margin above 0.7.

    It cannot flip: the seed (pinned in tiny_round_config) fixes the adapter's initialisation and the batch order,
    fp32 on the CPU computes the same numbers on every run, and the pairs scored are the pairs trained on (a held-out
    accuracy of six pairs would be a coin toss). Measured over seeds 0-4 (tests/training/measure_seeds.py): accuracy
    1.0 at every seed, mean margin 1.44-1.69, smallest margin of a pair 0.24-0.41; the threshold is half the smallest
    mean margin."""
    result = implicit_reward_accuracy(
        base_model_dir, round_one.adapter_dir, None, TINY_PAIRS, beta=0.1, max_length=64, batch_size=4
    )

    assert result.count == len(TINY_PAIRS)
    assert result.accuracy == 1.0 and result.mean_margin > 0.7
    assert math.isfinite(result.accuracy_low) and result.accuracy_low < result.accuracy


@pytest.mark.slow
def test_batching_does_not_change_real_log_probabilities(base_model_dir: Path) -> None:
    model, tokenizer = load_model(base_model_dir)

    one_by_one = pair_logprobs(model, tokenizer, TINY_PAIRS, max_length=64, batch_size=1)
    batched = pair_logprobs(model, tokenizer, TINY_PAIRS, max_length=64, batch_size=3)

    assert batched.chosen == pytest.approx(one_by_one.chosen, abs=1e-3)
    assert batched.rejected == pytest.approx(one_by_one.rejected, abs=1e-3)
    # a sensible answer is likelier than a wrong one under the instruction-tuned base model
    assert one_by_one.chosen[3] > one_by_one.rejected[3]
