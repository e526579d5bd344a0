"""Held-out checks of trained adapters: DPO's implicit-reward accuracy on human votes.

The implicit reward of an answer y to a prompt x is  r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x)),  with the
log-probabilities summed over the answer's tokens. Pairs are tokenized the way TRL's DPOTrainer tokenizes them, cut
and padded by TRL's own collator, and scored through TRL's fused LM head, so the rewards are those that
`DPOTrainer.evaluate` reports (tests/training/test_evaluate.py runs both on the same model and pairs). Our own parts,
each because TRL's differs or has none:
- a tie counts as half a win (TRL's rewards/accuracies counts it as a loss: an untrained adapter scores 0 there and
  0.5, chance, here), and the accuracy carries a 95 % Wilson score interval;
- several policies are scored against one fixed reference, the base model, whose log-probabilities of a held-out
  pair never change and are cached in a file that later rounds reuse (`ReferenceCache`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl.data_utils import common_prefix_length
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import add_fused_lm_head

from training.data import Message, PreferenceRow
from training.fused_head import score_answer_positions_only
from training.stats import wilson_interval

POLICY_ADAPTER = "policy"
REFERENCE_ADAPTER = "reference"


@dataclass(frozen=True)
class EvalResult:
    accuracy: float  # fraction of pairs whose chosen answer earns the higher reward; a tie counts as half
    mean_margin: float  # mean of reward(chosen) - reward(rejected)
    count: int  # pairs scored
    skipped: int = 0  # pairs left out because their prompt alone fills max_length (as TRL drops them in training)
    accuracy_low: float = 0.0  # 95 % Wilson score interval of the accuracy (ties as half a success)
    accuracy_high: float = 1.0


@dataclass(frozen=True)
class TokenizedPair:
    """A pair as TRL's DPOTrainer tokenizes it: the shared prompt, then each answer's tokens (not yet cut)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]

    def cache_key(self, model_key: str, max_length: int) -> str:
        text = json.dumps([model_key, max_length, self.prompt_ids, self.chosen_ids, self.rejected_ids])
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class PairLogprobs:
    chosen: list[float]
    rejected: list[float]
    kept: list[int]  # indices of the scored rows in the input


def tokenize_pair(tokenizer: Any, row: PreferenceRow) -> TokenizedPair:
    """Tokenize a conversational pair with the chat template as TRL's DPOTrainer does for training."""
    prompt_ids = _chat_ids(tokenizer, row["prompt"], add_generation_prompt=True)
    chosen_full = _chat_ids(tokenizer, row["prompt"] + row["chosen"], add_generation_prompt=False)
    rejected_full = _chat_ids(tokenizer, row["prompt"] + row["rejected"], add_generation_prompt=False)
    # Where they diverge, not len(prompt_ids): some templates render the prompt alone differently (TRL does this).
    prompt_length = min(common_prefix_length(prompt_ids, chosen_full), common_prefix_length(prompt_ids, rejected_full))
    return TokenizedPair(
        prompt_ids=prompt_ids[:prompt_length],
        chosen_ids=chosen_full[prompt_length:],
        rejected_ids=rejected_full[prompt_length:],
    )


def _chat_ids(tokenizer: Any, messages: list[Message], add_generation_prompt: bool) -> list[int]:
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=add_generation_prompt
    )
    return list(encoded["input_ids"])


@torch.inference_mode()
def score_pairs(
    model: Any, pairs: Sequence[TokenizedPair], max_length: int, batch_size: int, pad_token_id: int
) -> list[tuple[float, float]]:
    """(log pi(chosen | prompt), log pi(rejected | prompt)) of each pair under the model's active adapter.

    The model must carry TRL's fused LM head (see `load_model`). Pairs are batched by length (less padding) and
    cut to max_length by TRL's collator ("keep_start"); every pair's prompt must be shorter than max_length.
    """
    collator = DataCollatorForPreference(pad_token_id=pad_token_id, max_length=max_length)
    device = next(model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda index: pair_length(pairs[index]))
    scores: list[tuple[float, float]] = [(0.0, 0.0)] * len(pairs)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        examples = [
            {"prompt_ids": pair.prompt_ids, "chosen_ids": pair.chosen_ids, "rejected_ids": pair.rejected_ids}
            for pair in (pairs[index] for index in batch)
        ]
        inputs = {key: value.to(device) for key, value in collator(examples).items()}  # chosen rows, then rejected
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        output = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            labels=labels,
            fused_lm_head=True,
            use_cache=False,
        )
        sums = output.log_probs.float().sum(dim=1).cpu()  # [2B]: zero at every position that is not an answer token
        chosen, rejected = sums.chunk(2)
        for index, chosen_score, rejected_score in zip(batch, chosen.tolist(), rejected.tolist(), strict=True):
            scores[index] = (chosen_score, rejected_score)
    return scores


def pair_length(pair: TokenizedPair) -> int:
    return len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids))


def tokenize_rows(
    tokenizer: Any, rows: Sequence[PreferenceRow], max_length: int
) -> tuple[list[TokenizedPair], list[int]]:
    """The tokenized pairs TRL would keep, and their indices: a prompt that fills max_length leaves nothing to score."""
    pairs, kept = [], []
    for index, row in enumerate(rows):
        pair = tokenize_pair(tokenizer, row)
        if len(pair.prompt_ids) < max_length:
            pairs.append(pair)
            kept.append(index)
    return pairs, kept


def pair_logprobs(
    model: Any, tokenizer: Any, rows: Sequence[PreferenceRow], max_length: int, batch_size: int
) -> PairLogprobs:
    """Log-probabilities of every pair's chosen and rejected answer under the model's active adapter.

    Pairs whose prompt alone fills max_length have no answer token left to score and are left out (see `kept`).
    """
    pairs, kept = tokenize_rows(tokenizer, rows, max_length)
    scores = score_pairs(model, pairs, max_length, batch_size, tokenizer.pad_token_id)
    return PairLogprobs(chosen=[score[0] for score in scores], rejected=[score[1] for score in scores], kept=kept)


class ReferenceCache:
    """Log-probabilities of pairs under a model that does not change, kept in a JSON file across rounds.

    Two kinds live in one file, grouped by the model key: the held-out pairs under the fixed reference of the
    evaluation (the base model, fp32), and the training pairs under a round's DPO reference (the base model or the
    parent adapter, as training computes them: `training.dpo.reference_key`), which a trainer scores while it is
    idle (`python -m training prescore`). Within a group, keyed by max_length and a hash of the pair's tokens, so
    each later round scores only the pairs it has not seen. `None` as the path keeps the cache in memory only.

    Bounded: the file keeps the `keep_models` groups used last (each group notes when it was last read or written)
    and drops the rest at each save. Each promotion makes a new parent, so without this every parent a host ever
    trained from stayed in the file, rewritten whole at each save; the four kept cover the evaluation's base, the
    serving version's reference in fp32 and bf16, and the one before it (a rollback).

    Several processes may write the file (two trainers on one host): each save merges with what the file holds
    under an advisory lock (`flock`, released by the kernel when its process dies), then replaces the file whole.
    A file of the earlier layout (one flat "entries" object, which does not say which model a pair was scored
    under, so it could not be pruned) is read as empty and replaced: its pairs are scored again once.
    """

    KEEP_MODELS = 4
    # A group only read (every pair found) is marked used on disk at most this often: a save rewrites the file.
    USED_SAVE_SECONDS = 60.0

    def __init__(self, path: Path | str | None, keep_models: int = KEEP_MODELS) -> None:
        if keep_models < 1:
            raise ValueError("keep_models must be at least 1")
        self.path = None if path is None else Path(path)
        self.keep_models = keep_models
        self.models: dict[str, dict[str, Any]] = self._read()
        self.hits = 0
        self.misses = 0

    def _read(self) -> dict[str, dict[str, Any]]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            stored = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"reference cache {self.path} is not valid JSON: {error}") from error
        if isinstance(stored, dict) and "models" not in stored and isinstance(stored.get("entries"), dict):
            return {}  # the earlier layout: scored again, then saved in this one
        models = stored.get("models") if isinstance(stored, dict) else None
        if not isinstance(models, dict) or not all(
            isinstance(group, dict)
            and isinstance(group.get("entries"), dict)
            and isinstance(group.get("used"), int | float)
            for group in models.values()
        ):
            raise ValueError(
                f'reference cache {self.path} must be a JSON object with a "models" object of '
                '{"used": seconds, "entries": {...}} by model key'
            )
        return {key: {"used": float(group["used"]), "entries": dict(group["entries"])} for key, group in models.items()}

    def scores(
        self, model: Any, model_key: str, pairs: Sequence[TokenizedPair], max_length: int, batch_size: int, pad: int
    ) -> list[tuple[float, float]]:
        """The reference scores of `pairs`, computing with the model's active adapter only those not cached yet."""
        return self.scores_by(
            model_key, pairs, max_length, lambda missing: score_pairs(model, missing, max_length, batch_size, pad)
        )

    def scores_by(
        self,
        model_key: str,
        pairs: Sequence[TokenizedPair],
        max_length: int,
        compute: Callable[[list[TokenizedPair]], Iterable[tuple[float, float]]],
    ) -> list[tuple[float, float]]:
        """The scores of `pairs` under `model_key`, `compute` called on those not cached yet (it may yield them one
        at a time: what it yielded is saved even when it stops with an exception)."""
        group = self.models.setdefault(model_key, {"used": 0.0, "entries": {}})
        entries: dict[str, list[float]] = group["entries"]
        last_used, group["used"] = group["used"], time.time()
        keys = [pair.cache_key(model_key, max_length) for pair in pairs]
        missing = [index for index, key in enumerate(keys) if key not in entries]
        computed = 0
        try:
            for index, score in zip(missing, compute([pairs[index] for index in missing]), strict=False):
                entries[keys[index]] = [float(score[0]), float(score[1])]
                computed += 1
        finally:
            self.misses += computed
            if computed or group["used"] - last_used > self.USED_SAVE_SECONDS:
                self.save()
        if computed < len(missing):
            raise ValueError(f"{len(missing)} pairs to score, {computed} scored")
        self.hits += len(pairs) - len(missing)
        # From this call's own entries: a save may have pruned the group meanwhile (others used newer ones).
        return [(entries[key][0], entries[key][1]) for key in keys]

    def save(self) -> None:
        if self.path is None:
            self.models = self._pruned(self.models)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.with_name(self.path.name + ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged = self._read()
            for key, group in self.models.items():
                into = merged.setdefault(key, {"used": 0.0, "entries": {}})
                into["entries"].update(group["entries"])
                into["used"] = max(into["used"], group["used"])
            merged = self._pruned(merged)
            temporary = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps({"models": merged}) + "\n", encoding="utf-8")
            temporary.replace(self.path)  # atomic: a reader never sees half a file
        self.models = merged

    def _pruned(self, models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        kept = sorted(models, key=lambda key: models[key]["used"], reverse=True)[: self.keep_models]
        return {key: models[key] for key in kept}


def model_cache_key(model_dir: Path | str) -> str:
    return str(Path(model_dir).resolve())


def implicit_rewards(policy_logprobs: Sequence[float], reference_logprobs: Sequence[float], beta: float) -> list[float]:
    return [beta * (policy - reference) for policy, reference in zip(policy_logprobs, reference_logprobs, strict=True)]


def reward_accuracy(chosen_rewards: Sequence[float], rejected_rewards: Sequence[float], skipped: int = 0) -> EvalResult:
    """Score rewards of paired answers. A tie counts as half a win, so an untrained adapter scores 0.5 (chance)."""
    if len(chosen_rewards) != len(rejected_rewards):
        raise ValueError("chosen_rewards and rejected_rewards must have the same length")
    if not chosen_rewards:
        raise ValueError("no pair to score (every prompt may fill max_length)")
    margins = [chosen - rejected for chosen, rejected in zip(chosen_rewards, rejected_rewards, strict=True)]
    wins = sum(1.0 if margin > 0 else 0.5 if margin == 0 else 0.0 for margin in margins)
    low, high = wilson_interval(wins, len(margins))
    return EvalResult(
        accuracy=wins / len(margins),
        mean_margin=sum(margins) / len(margins),
        count=len(margins),
        skipped=skipped,
        accuracy_low=low,
        accuracy_high=high,
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
    _check_scoring_arguments(beta, max_length, batch_size)
    model, tokenizer = load_model(model_dir, adapter_dir, reference_adapter_dir)
    with active_adapter(model, POLICY_ADAPTER if adapter_dir else None):
        policy = pair_logprobs(model, tokenizer, rows, max_length, batch_size)
    with active_adapter(model, REFERENCE_ADAPTER if reference_adapter_dir else None):
        reference = pair_logprobs(model, tokenizer, rows, max_length, batch_size)
    return evaluate_pairs(policy, reference, beta, total_rows=len(rows))


def compare_against_base(
    model: Any,
    tokenizer: Any,
    model_key: str,
    rows: Sequence[PreferenceRow],
    policies: Mapping[str, str | None],
    beta: float,
    max_length: int,
    batch_size: int,
    cache: ReferenceCache,
) -> dict[str, EvalResult]:
    """Score each policy (name -> adapter name in `model`, None for the bare base) against the base model.

    Every policy is scored on the same pairs against the same fixed reference, so their numbers compare; the base
    model's scores come from `cache` where it has them.
    """
    _check_scoring_arguments(beta, max_length, batch_size)
    pairs, kept = tokenize_rows(tokenizer, rows, max_length)
    if not pairs:
        raise ValueError(f"no pair to score: every prompt fills max_length={max_length}")
    with active_adapter(model, None):
        reference = cache.scores(model, model_key, pairs, max_length, batch_size, tokenizer.pad_token_id)
    results = {}
    for name, adapter in policies.items():
        with active_adapter(model, adapter):
            scores = (
                reference
                if adapter is None
                else score_pairs(model, pairs, max_length, batch_size, tokenizer.pad_token_id)
            )
        results[name] = reward_accuracy(
            [beta * (policy[0] - base[0]) for policy, base in zip(scores, reference, strict=True)],
            [beta * (policy[1] - base[1]) for policy, base in zip(scores, reference, strict=True)],
            skipped=len(rows) - len(kept),
        )
    return results


def _check_scoring_arguments(beta: float, max_length: int, batch_size: int) -> None:
    if not beta > 0 or max_length < 1 or batch_size < 1:
        raise ValueError("beta must be > 0, max_length and batch_size >= 1")


def load_model(
    model_dir: Path | str,
    adapter_dir: Path | str | None = None,
    reference_adapter_dir: Path | str | None = None,
    named_adapters: Mapping[str, Path | str] | None = None,
) -> tuple[Any, Any]:
    """The base model in fp32 for exact log-probabilities, with TRL's fused LM head and the given adapters.

    adapter_dir and reference_adapter_dir load as POLICY_ADAPTER and REFERENCE_ADAPTER; named_adapters under their
    own names.
    """
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    add_fused_lm_head(model)  # log-probs in chunks, never the [B, T, vocabulary] logits; before PEFT wraps it
    score_answer_positions_only()
    adapters = [(POLICY_ADAPTER, adapter_dir), (REFERENCE_ADAPTER, reference_adapter_dir)]
    adapters += list((named_adapters or {}).items())
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
        previous = model.active_adapter
        model.set_adapter(adapter_name)
        try:
            yield
        finally:
            model.set_adapter(previous)
