"""TRL's fused LM head, made to score only the answer positions on the CPU too.

TRL 1.16 computes each token's log-probability in chunks over the vocabulary (`add_fused_lm_head`). On devices with
Triton it scores only the positions whose label counts (the answer tokens); elsewhere it scores every position,
prompt and padding included, so that the tile shapes stay fixed for compilers such as Neuron's, and masks the result.
Eager PyTorch on a CPU has no such need, and there the LM head (49,152 words for the default model) is a large part of
a step: scoring only the answer tokens gives the same log-probabilities for a fraction of the work
(docs/benchmarks.md, "Training speed").
"""

from __future__ import annotations

from typing import Any

import torch
import trl.trainer.utils as trl_trainer_utils
from trl.kernels.chunked_logprob import _use_triton as trl_uses_triton

__all__ = ["score_answer_positions_only"]


def _compact_scoring(device: torch.device) -> bool:
    """Where TRL's fused head scores only the labelled positions: on Triton devices (TRL's choice) and on the CPU."""
    return device.type == "cpu" or trl_uses_triton(device)


def score_answer_positions_only(enabled: bool = True) -> None:
    """Switch the compact scoring on (or back to TRL's own choice) for every model patched by `add_fused_lm_head`.

    TRL's fused forward reads the module-level `_use_triton` of `trl.trainer.utils` on every call, and there only to
    choose between the two scorings (the kernel itself decides on Triton through its own module), so replacing that
    one name changes nothing else. Off under `torch.compile` (a round's `torch_compile`): then the varying number of
    answer tokens would recompile the graph every step.
    """
    replacement: Any = _compact_scoring if enabled else trl_uses_triton
    trl_trainer_utils._use_triton = replacement  # type: ignore[attr-defined]
