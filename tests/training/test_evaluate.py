from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tests.training.samples import TINY_PAIRS, pair
from training.dpo import TrainResult
from training.evaluate import (
    POLICY_ADAPTER,
    EvalResult,
    PairLogprobs,
    active_adapter,
    evaluate_pairs,
    gate_decision,
    implicit_reward_accuracy,
    load_model,
    mean_answer_length,
    pair_logprobs,
    reward_accuracy,
    sequence_logprob,
)

# A four-token world small enough to compute log-probabilities by hand.
# NEXT_TOKEN[previous][next] = P(next | previous)
NEXT_TOKEN = [
    [0.1, 0.2, 0.3, 0.4],
    [0.25, 0.25, 0.25, 0.25],
    [0.5, 0.125, 0.125, 0.25],
    [0.2, 0.5, 0.2, 0.1],
]
TURN_START = 3


class DigitTokenizer:
    """A 'chat template' that writes each message as its digits, with token 3 opening every assistant turn."""

    pad_token_id = 0

    def apply_chat_template(
        self, messages: list[dict[str, str]], tokenize: bool, return_dict: bool, add_generation_prompt: bool = False
    ) -> dict[str, list[int]]:
        ids: list[int] = []
        for message in messages:
            ids += [TURN_START] if message["role"] == "assistant" else []
            ids += [int(digit) for digit in message["content"]]
        return {"input_ids": ids + ([TURN_START] if add_generation_prompt else [])}


class BigramModel(torch.nn.Module):
    """Logits that depend only on the current token: log NEXT_TOKEN[token]."""

    def __init__(self) -> None:
        super().__init__()
        self.log_table = torch.nn.Parameter(torch.tensor(NEXT_TOKEN).log(), requires_grad=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, use_cache: bool) -> Any:
        return SimpleNamespace(logits=self.log_table[input_ids])  # [B, T, 4]


def test_sequence_logprob_sums_the_answer_tokens_only() -> None:
    # prompt "1" then turn start; the answer "12" is scored as P(1 | 3) * P(2 | 1) = 0.5 * 0.25
    prompt = [{"role": "user", "content": "1"}]

    logprob = sequence_logprob(BigramModel(), DigitTokenizer(), prompt, [{"role": "assistant", "content": "12"}])

    assert logprob == pytest.approx(math.log(0.5 * 0.25))


def test_sequence_logprob_cuts_at_max_length() -> None:
    # [1, 3, 1, 2] cut to three tokens leaves only P(1 | 3)
    prompt = [{"role": "user", "content": "1"}]

    logprob = sequence_logprob(BigramModel(), DigitTokenizer(), prompt, [{"role": "assistant", "content": "12"}], 3)

    assert logprob == pytest.approx(math.log(0.5))


def test_pair_logprobs_pads_batches_and_skips_prompts_that_fill_max_length() -> None:
    rows = [
        pair("1", "12", "2"),  # chosen 0.5 * 0.25; rejected P(2 | 3) = 0.2 (shorter: padded in the batch)
        pair("111", "1", "2"),  # prompt [1, 1, 1, 3] fills max_length=4: nothing left to score
        pair("2", "20", "0"),  # chosen P(2 | 3) * P(0 | 2) = 0.2 * 0.5; rejected P(0 | 3) = 0.2
    ]

    scores = pair_logprobs(BigramModel(), DigitTokenizer(), rows, max_length=4, batch_size=2)

    assert scores.kept == [0, 2]
    assert scores.chosen == pytest.approx([math.log(0.125), math.log(0.1)])
    assert scores.rejected == pytest.approx([math.log(0.2), math.log(0.2)])


def test_reward_accuracy_counts_a_tie_as_half() -> None:
    result = reward_accuracy([1.0, 0.2, 0.5, -1.0], [0.5, 0.3, 0.5, -2.0])

    assert result == EvalResult(accuracy=2.5 / 4, mean_margin=pytest.approx((0.5 - 0.1 + 0 + 1) / 4), count=4)


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


@pytest.mark.parametrize(
    ("accuracy", "parent", "promote", "reason"),
    [
        (0.55, None, False, "held-out accuracy 0.550 is below the threshold 0.600"),
        (0.65, None, True, "no parent to compare with"),
        (0.60, None, True, "meets the threshold 0.600"),
        (0.66, 0.68, True, "within 0.030 of the parent's 0.680"),
        (0.65, 0.68, True, "within 0.030 of the parent's 0.680"),
        (0.64, 0.68, False, "more than 0.030 below the parent's 0.680"),
        (0.59, 0.50, False, "below the threshold"),
        (0.70, 0.62, True, "meets the threshold"),
    ],
)
def test_gate_decision(accuracy: float, parent: float | None, promote: bool, reason: str) -> None:
    decision = gate_decision(accuracy, parent, threshold=0.6, tolerance=0.03)

    assert decision.promote is promote
    assert reason in decision.reason


@pytest.mark.parametrize(
    ("accuracy", "parent", "tolerance"), [(1.2, None, 0.0), (math.nan, None, 0.0), (0.5, -0.1, 0.0), (0.5, 0.5, -1)]
)
def test_gate_decision_rejects_impossible_inputs(accuracy: float, parent: float | None, tolerance: float) -> None:
    with pytest.raises(ValueError):
        gate_decision(accuracy, parent, threshold=0.6, tolerance=tolerance)


@pytest.mark.slow
def test_base_model_against_itself_is_chance(base_model_dir: Path) -> None:
    result = implicit_reward_accuracy(base_model_dir, None, None, TINY_PAIRS, beta=0.1, max_length=64, batch_size=4)

    assert result == EvalResult(accuracy=0.5, mean_margin=0.0, count=len(TINY_PAIRS), skipped=0)


@pytest.mark.slow
def test_adapter_against_a_copy_of_itself_is_chance(base_model_dir: Path, round_one: TrainResult) -> None:
    adapter = round_one.adapter_dir

    result = implicit_reward_accuracy(
        base_model_dir, adapter, adapter, TINY_PAIRS, beta=0.1, max_length=64, batch_size=4
    )

    assert (result.accuracy, result.mean_margin) == (0.5, 0.0)


@pytest.mark.slow
def test_trained_adapter_prefers_what_it_was_trained_to_prefer(base_model_dir: Path, round_one: TrainResult) -> None:
    beta = 0.1
    result = implicit_reward_accuracy(
        base_model_dir, round_one.adapter_dir, None, TINY_PAIRS, beta=beta, max_length=64, batch_size=4
    )

    # the same numbers, one sequence at a time through the public single-sequence function
    model, tokenizer = load_model(base_model_dir, round_one.adapter_dir)
    margins = []
    for row in TINY_PAIRS:
        rewards = []
        for answer in (row["chosen"], row["rejected"]):
            with active_adapter(model, POLICY_ADAPTER):
                policy = sequence_logprob(model, tokenizer, row["prompt"], answer, 64)
            with active_adapter(model, None):
                reference = sequence_logprob(model, tokenizer, row["prompt"], answer, 64)
            rewards.append(beta * (policy - reference))
        margins.append(rewards[0] - rewards[1])
    assert result.count == len(TINY_PAIRS)
    assert result.mean_margin == pytest.approx(sum(margins) / len(margins), abs=1e-4)
    assert result.accuracy == sum(margin > 0 for margin in margins) / len(margins)
    assert result.accuracy > 0.5 and result.mean_margin > 0


@pytest.mark.slow
def test_batching_does_not_change_real_log_probabilities(base_model_dir: Path) -> None:
    model, tokenizer = load_model(base_model_dir)

    one_by_one = pair_logprobs(model, tokenizer, TINY_PAIRS, max_length=64, batch_size=1)
    batched = pair_logprobs(model, tokenizer, TINY_PAIRS, max_length=64, batch_size=3)

    assert batched.chosen == pytest.approx(one_by_one.chosen, abs=1e-3)
    assert batched.rejected == pytest.approx(one_by_one.rejected, abs=1e-3)
    # a sensible answer is likelier than a wrong one under the instruction-tuned base model
    assert one_by_one.chosen[3] > one_by_one.rejected[3]


@pytest.mark.slow
def test_mean_answer_length_counts_generated_tokens(base_model_dir: Path) -> None:
    prompts = [row["prompt"] for row in TINY_PAIRS[:2]]

    greedy = mean_answer_length(base_model_dir, None, prompts, max_new_tokens=6, seed=0, temperature=0)
    sampled = mean_answer_length(base_model_dir, None, prompts, max_new_tokens=6, seed=1)

    assert 1 <= greedy <= 6 and 1 <= sampled <= 6
    assert mean_answer_length(base_model_dir, None, prompts, max_new_tokens=6, seed=1) == sampled
