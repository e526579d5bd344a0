"""TRL's fused LM head scoring only the answer positions on the CPU: the same log-probs and gradients, less work."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import trl.trainer.utils as trl_trainer_utils
from transformers import AutoModelForCausalLM
from trl.trainer.utils import add_fused_lm_head

from training.fused_head import score_answer_positions_only


@pytest.fixture
def scored_rows(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The number of rows (positions) each call of TRL's chunked log-prob function is given."""
    rows: list[int] = []
    original = trl_trainer_utils._ChunkedLogProbFunction

    class Counting:
        @staticmethod
        def apply(hidden: torch.Tensor, *args: Any) -> Any:
            rows.append(hidden.shape[0])
            return original.apply(hidden, *args)

    monkeypatch.setattr(trl_trainer_utils, "_ChunkedLogProbFunction", Counting)
    yield rows
    score_answer_positions_only()  # what every round and evaluation sets anyway


def forward(model_dir: Path, compact: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probs of two padded rows whose first tokens are prompt (label -100), and one weight's gradient."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    add_fused_lm_head(model)
    score_answer_positions_only(enabled=compact)
    input_ids = torch.randint(5, 1000, (2, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0  # the second row is padded
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :5] = -100  # the prompt
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
    output.log_probs.sum().backward()
    gradient = model.model.layers[0].mlp.up_proj.weight.grad
    return output.log_probs.detach(), gradient, labels


def test_the_cpu_scores_only_answer_tokens_with_the_same_log_probs_and_gradients(
    tiny_model_dir: Path, scored_rows: list[int]
) -> None:
    full, full_gradient, labels = forward(tiny_model_dir, compact=False)
    compact, compact_gradient, _ = forward(tiny_model_dir, compact=True)

    answer_tokens = int((labels[:, 1:] != -100).sum())  # position t is scored on label t + 1
    assert scored_rows == [2 * 11, answer_tokens]  # TRL's own choice on the CPU, then only the answer tokens
    assert answer_tokens == 7 + 4
    assert torch.equal(compact == 0, full == 0)
    assert compact.count_nonzero() == answer_tokens
    torch.testing.assert_close(compact, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compact_gradient, full_gradient, rtol=1e-4, atol=2e-6)
