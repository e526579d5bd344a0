"""Sample data and paths the training tests share (conftest.py turns them into fixtures)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from training.config import RoundConfig
from training.data import PreferenceRow
from training.evaluate import POLICY_ADAPTER, active_adapter, evaluate_pairs, load_model, pair_logprobs

REPO = Path(__file__).resolve().parents[2]
# BASE_MODEL_DIR lets a worktree use a model prepared elsewhere instead of converting its own copy.
BASE_MODEL_DIR = Path(os.environ.get("BASE_MODEL_DIR") or REPO / "var" / "models" / "smollm2-135m-instruct")
HH_RLHF_PATH = Path(os.environ.get("HH_RLHF_PATH") or REPO.parent / "shared" / "data" / "hh_rlhf_harmless_dev.jsonl")


def pair(question: str, good: str, bad: str) -> PreferenceRow:
    return {
        "prompt": [{"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": good}],
        "rejected": [{"role": "assistant", "content": bad}],
    }


TINY_PAIRS = [
    pair("What is 2 + 2?", "4.", "I don't know, maybe 5."),
    pair("Name a colour.", "Blue.", "No."),
    pair("Say hello.", "Hello!", "Go away."),
    pair("What is the capital of France?", "Paris.", "London, I think."),
    pair("Is ice cold?", "Yes, ice is cold.", "Ice is hot."),
    pair("How many legs has a cat?", "Four.", "Seven legs."),
]


def tiny_round_config(base_model_dir: Path, output_dir: Path, **overrides: object) -> RoundConfig:
    """Three steps of batch 2 over TINY_PAIRS; the large learning rate moves the adapter measurably in three steps."""
    values: dict[str, object] = {
        "base_model_dir": str(base_model_dir),
        "output_dir": str(output_dir),
        "max_length": 64,
        "batch_size": 2,
        "max_steps": 3,
        "learning_rate": 1e-3,
        # Pinned, not left to the config's default: the adapter's initial A matrices and the batch order follow it,
        # and the tests that check what training learned state the margins they measured at this seed.
        "seed": 0,
        # fp32 throughout, so that the checks of exact arithmetic hold (a fresh adapter's first loss is log 2); the
        # bf16 default of CPUs that have it is trained by test_a_bf16_round_on_the_cpu_learns and the integration test
        "cpu_bf16": False,
        **overrides,
    }
    return RoundConfig.from_dict(values)


def tiny_model_write(base_model_dir: Path, directory: Path) -> Path:
    """A two-layer Llama with random weights and the base model's tokenizer, in `directory`: real code paths in
    seconds."""
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


BETA = 0.1  # the round config's default, with which the tests train and score


def training_set_scores(base_model_dir: Path, adapter_dir: Path) -> dict[str, float]:
    """An adapter trained on TINY_PAIRS (beta 0.1, max_length 64), scored on those same pairs against the base model,
    in fp32: its DPO loss there (exactly log 2 before any step: a fresh adapter's B matrices are zero), its
    implicit-reward accuracy, mean margin and smallest margin. The same pairs before and after, so a lower loss is
    learning, not an easier batch."""
    model, tokenizer = load_model(base_model_dir, adapter_dir, None)
    with active_adapter(model, POLICY_ADAPTER):
        policy = pair_logprobs(model, tokenizer, TINY_PAIRS, 64, 4)
    with active_adapter(model, None):
        reference = pair_logprobs(model, tokenizer, TINY_PAIRS, 64, 4)
    margins = [
        BETA * ((chosen - chosen_reference) - (rejected - rejected_reference))
        for chosen, chosen_reference, rejected, rejected_reference in zip(
            policy.chosen, reference.chosen, policy.rejected, reference.rejected, strict=True
        )
    ]
    loss = sum(math.log1p(math.exp(-margin)) for margin in margins) / len(margins)  # -log sigmoid(margin)
    result = evaluate_pairs(policy, reference, BETA, total_rows=len(TINY_PAIRS))
    return {"loss": loss, "accuracy": result.accuracy, "mean_margin": result.mean_margin, "min_margin": min(margins)}
