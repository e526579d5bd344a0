"""Held-out checks of a trained adapter: DPO's implicit-reward accuracy on human votes, answer length, promotion gate.

The implicit reward of an answer y to a prompt x is  r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x)),  with the
log-probabilities summed over the answer's tokens, exactly as TRL's DPOTrainer computes them while training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl.data_utils import common_prefix_length

from training.data import Message, PreferenceRow

POLICY_ADAPTER = "policy"
REFERENCE_ADAPTER = "reference"


@dataclass(frozen=True)
class EvalResult:
    accuracy: float  # fraction of pairs whose chosen answer earns the higher reward; a tie counts as half
    mean_margin: float  # mean of reward(chosen) - reward(rejected)
    count: int  # pairs scored
    skipped: int = 0  # pairs left out because their prompt alone fills max_length (as TRL drops them in training)


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str


@dataclass(frozen=True)
class TokenizedAnswer:
    input_ids: list[int]  # prompt + answer, already cut to max_length
    answer_start: int  # index of the answer's first token in input_ids


@dataclass(frozen=True)
class PairLogprobs:
    chosen: list[float]
    rejected: list[float]
    kept: list[int]  # indices of the scored rows in the input


def tokenize_answer(
    tokenizer: Any, prompt: list[Message], answer: list[Message], max_length: int | None = None
) -> TokenizedAnswer:
    """Tokenize prompt + answer with the chat template the way TRL's DPOTrainer does for training."""
    prompt_ids = _chat_ids(tokenizer, prompt, add_generation_prompt=True)
    full_ids = _chat_ids(tokenizer, prompt + answer, add_generation_prompt=False)
    # Where the two diverge, not len(prompt_ids): some templates render the prompt alone differently (TRL does this).
    answer_start = common_prefix_length(prompt_ids, full_ids)
    if max_length is not None:
        full_ids = full_ids[:max_length]  # TRL's "keep_start" truncation
    return TokenizedAnswer(input_ids=full_ids, answer_start=answer_start)


def _chat_ids(tokenizer: Any, messages: list[Message], add_generation_prompt: bool) -> list[int]:
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=add_generation_prompt
    )
    return list(encoded["input_ids"])


def answer_logprobs(model: Any, answers: Sequence[TokenizedAnswer], pad_token_id: int) -> torch.Tensor:
    """Sum of log pi(token | everything before it) over each answer's tokens, for a batch: shape [len(answers)]."""
    device = next(model.parameters()).device
    width = max(len(answer.input_ids) for answer in answers)
    input_ids = torch.full((len(answers), width), pad_token_id, dtype=torch.long)  # [B, T], padded on the right
    attention_mask = torch.zeros((len(answers), width), dtype=torch.long)
    answer_mask = torch.zeros((len(answers), width), dtype=torch.bool)
    for row, answer in enumerate(answers):
        length = len(answer.input_ids)
        input_ids[row, :length] = torch.tensor(answer.input_ids)
        attention_mask[row, :length] = 1
        answer_mask[row, answer.answer_start : length] = True
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # [B, T, V]
    # Position t predicts token t + 1, so the logits drop their last position and the targets their first.
    logits = logits[:, :-1].float()  # [B, T-1, V]
    targets = input_ids[:, 1:]  # [B, T-1]
    # log_softmax picked at the target, without materialising a second [B, T-1, V] tensor
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # [B, T-1]
    return (picked * answer_mask[:, 1:].to(device)).sum(dim=-1).cpu()  # [B]


@torch.inference_mode()
def sequence_logprob(
    model: Any,
    tokenizer: Any,
    prompt_messages: list[Message],
    completion_messages: list[Message],
    max_length: int | None = None,
) -> float:
    """log pi(completion | prompt), summed over the completion's tokens (the chat template's end-of-turn included)."""
    answer = tokenize_answer(tokenizer, prompt_messages, completion_messages, max_length)
    return float(answer_logprobs(model, [answer], tokenizer.pad_token_id)[0])


@torch.inference_mode()
def pair_logprobs(
    model: Any, tokenizer: Any, rows: Sequence[PreferenceRow], max_length: int, batch_size: int
) -> PairLogprobs:
    """Log-probabilities of every pair's chosen and rejected answer under the model's active adapter.

    Pairs whose prompt alone fills max_length have no answer token left to score and are left out (see `kept`).
    """
    answers: list[TokenizedAnswer] = []
    kept: list[int] = []
    for index, row in enumerate(rows):
        chosen = tokenize_answer(tokenizer, row["prompt"], row["chosen"], max_length)
        rejected = tokenize_answer(tokenizer, row["prompt"], row["rejected"], max_length)
        if max(chosen.answer_start, rejected.answer_start) >= max_length:
            continue
        answers += [chosen, rejected]
        kept.append(index)
    # Batch answers of similar length together: less padding to run through the model.
    order = sorted(range(len(answers)), key=lambda index: len(answers[index].input_ids))
    scores = [0.0] * len(answers)
    for start in range(0, len(order), 2 * batch_size):
        batch = order[start : start + 2 * batch_size]
        batch_scores = answer_logprobs(model, [answers[index] for index in batch], tokenizer.pad_token_id)
        for index, score in zip(batch, batch_scores.tolist(), strict=True):
            scores[index] = score
    return PairLogprobs(chosen=scores[0::2], rejected=scores[1::2], kept=kept)


def implicit_rewards(policy_logprobs: Sequence[float], reference_logprobs: Sequence[float], beta: float) -> list[float]:
    return [beta * (policy - reference) for policy, reference in zip(policy_logprobs, reference_logprobs, strict=True)]


def reward_accuracy(chosen_rewards: Sequence[float], rejected_rewards: Sequence[float], skipped: int = 0) -> EvalResult:
    """Score rewards of paired answers. A tie counts as half a win, so an untrained adapter scores 0.5 (chance).

    (TRL's training metric rewards/accuracies counts a tie as a loss: it starts at 0 on the first step.)
    """
    if len(chosen_rewards) != len(rejected_rewards):
        raise ValueError("chosen_rewards and rejected_rewards must have the same length")
    if not chosen_rewards:
        raise ValueError("no pair to score (every prompt may fill max_length)")
    margins = [chosen - rejected for chosen, rejected in zip(chosen_rewards, rejected_rewards, strict=True)]
    wins = sum(1.0 if margin > 0 else 0.5 if margin == 0 else 0.0 for margin in margins)
    return EvalResult(
        accuracy=wins / len(margins), mean_margin=sum(margins) / len(margins), count=len(margins), skipped=skipped
    )


def evaluate_pairs(policy: PairLogprobs, reference: PairLogprobs, beta: float, total_rows: int) -> EvalResult:
    if policy.kept != reference.kept:
        raise ValueError("policy and reference log-probabilities cover different pairs")
    return reward_accuracy(
        implicit_rewards(policy.chosen, reference.chosen, beta),
        implicit_rewards(policy.rejected, reference.rejected, beta),
        skipped=total_rows - len(policy.kept),
    )


def implicit_reward_accuracy(
    model_dir: Path | str,
    adapter_dir: Path | str | None,
    reference_adapter_dir: Path | str | None,
    rows: Sequence[PreferenceRow],
    beta: float,
    max_length: int,
    batch_size: int,
) -> EvalResult:
    """DPO implicit-reward accuracy of the policy (base + adapter_dir) against a reference on held-out pairs.

    The reference is the base model when reference_adapter_dir is None, else base + that adapter. With neither
    adapter given, policy and reference are the same model: every pair ties and the accuracy is 0.5 by construction.
    """
    if beta <= 0 or max_length < 1 or batch_size < 1:
        raise ValueError("beta must be > 0, max_length and batch_size >= 1")
    model, tokenizer = load_model(model_dir, adapter_dir, reference_adapter_dir)
    policy_adapter = POLICY_ADAPTER if adapter_dir else None
    reference_adapter = REFERENCE_ADAPTER if reference_adapter_dir else None
    with active_adapter(model, policy_adapter):
        policy = pair_logprobs(model, tokenizer, rows, max_length, batch_size)
    with active_adapter(model, reference_adapter):
        reference = pair_logprobs(model, tokenizer, rows, max_length, batch_size)
    return evaluate_pairs(policy, reference, beta, total_rows=len(rows))


def load_model(
    model_dir: Path | str, adapter_dir: Path | str | None = None, reference_adapter_dir: Path | str | None = None
) -> tuple[Any, Any]:
    """The base model in fp32 for exact log-probabilities, with the given adapters loaded under fixed names."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    adapters = [(POLICY_ADAPTER, adapter_dir), (REFERENCE_ADAPTER, reference_adapter_dir)]
    for name, directory in adapters:
        if directory is None:
            continue
        if isinstance(model, PeftModel):
            model.load_adapter(str(directory), adapter_name=name)
        else:
            model = PeftModel.from_pretrained(model, str(directory), adapter_name=name)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    model.eval()
    return model, tokenizer


@contextlib.contextmanager
def active_adapter(model: Any, adapter_name: str | None) -> Iterator[None]:
    """Run with only `adapter_name` active; None means the bare base model."""
    if not isinstance(model, PeftModel):
        if adapter_name is not None:
            raise ValueError(f"the model has no adapter {adapter_name!r}")
        yield
    elif adapter_name is None:
        with model.disable_adapter():
            yield
    else:
        model.set_adapter(adapter_name)
        yield


@torch.inference_mode()
def mean_answer_length(
    model_dir: Path | str,
    adapter_dir: Path | str | None,
    prompts: Sequence[list[Message]],
    max_new_tokens: int,
    seed: int,
    temperature: float = 0.7,
    batch_size: int = 8,
) -> float:
    """Mean number of tokens the model answers the prompts with (end-of-turn excluded, capped at max_new_tokens).

    Sampled with the given seed at `temperature`, or greedy when temperature is 0: DPO is known to lengthen answers,
    and this is the cheap check for it.
    """
    if not prompts or max_new_tokens < 1:
        raise ValueError("mean_answer_length needs at least one prompt and max_new_tokens >= 1")
    model, tokenizer = load_model(model_dir, adapter_dir)
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    torch.manual_seed(seed)
    sampling: dict[str, Any] = {"do_sample": False}
    if temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature}
    lengths: list[int] = []
    for start in range(0, len(prompts), batch_size):
        texts = [
            tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            for prompt in prompts[start : start + batch_size]
        ]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        output = model.generate(
            **batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
        )  # [B, prompt T + new T]
        for new_tokens in output[:, batch["input_ids"].shape[1] :].tolist():
            lengths.append(_length_before(new_tokens, tokenizer.eos_token_id))
    return sum(lengths) / len(lengths)


def _length_before(token_ids: list[int], stop_id: int) -> int:
    return token_ids.index(stop_id) if stop_id in token_ids else len(token_ids)


def gate_decision(accuracy: float, parent_accuracy: float | None, threshold: float, tolerance: float) -> GateDecision:
    """Promote only when accuracy >= threshold and it is no more than `tolerance` below the parent's accuracy."""
    for name, value in (("accuracy", accuracy), ("parent_accuracy", parent_accuracy), ("threshold", threshold)):
        if value is not None and not 0 <= value <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if accuracy < threshold:
        return GateDecision(False, f"held-out accuracy {accuracy:.3f} is below the threshold {threshold:.3f}")
    if parent_accuracy is not None and accuracy < parent_accuracy - tolerance:
        return GateDecision(
            False,
            f"held-out accuracy {accuracy:.3f} is more than {tolerance:.3f} below the parent's {parent_accuracy:.3f}",
        )
    against_parent = (
        "no parent to compare with"
        if parent_accuracy is None
        else f"within {tolerance:.3f} of the parent's {parent_accuracy:.3f} or better"
    )
    return GateDecision(True, f"held-out accuracy {accuracy:.3f} meets the threshold {threshold:.3f}; {against_parent}")
