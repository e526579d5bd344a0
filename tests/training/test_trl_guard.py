"""An upgrade guard: what our training code takes from TRL's (and transformers') private parts is still there.

training/fused_head.py replaces a module-level name inside TRL, and training/dpo.py overrides private methods of
DPOTrainer and relies on the inside of its loss. A new TRL may rename or restructure any of them without a word in
its changelog, and some of the breakage would be silent (the weights would stop weighting, the CPU would score every
position again). Each check here is one such reliance, read from the installed library in well under a second (no
model, no training); a failure names the place in our code to revisit.
"""

from __future__ import annotations

import inspect
import re
import types
from collections.abc import Callable
from dataclasses import dataclass, fields

import pytest
import transformers
import trl
import trl.kernels.chunked_logprob as trl_chunked_logprob
import trl.trainer.utils as trl_trainer_utils
from trl import DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

from training.config import SUPPORTED_LOSS_TYPES


@dataclass(frozen=True)
class Reliance:
    place: str  # where in our code
    what: str  # what it takes from TRL
    check: Callable[[], None]  # raises (AssertionError, AttributeError, ...) when TRL no longer has it


def _source(function: object) -> str:
    return inspect.getsource(function)  # type: ignore[arg-type]


def _parameters(function: Callable[..., object]) -> list[str]:
    return list(inspect.signature(function).parameters)


def _nested_code(function: Callable[..., object], name: str) -> types.CodeType:
    """The code object of a function defined inside `function` (e.g. the forward that a patcher installs)."""
    nested = [const for const in function.__code__.co_consts if isinstance(const, types.CodeType)]
    matching = [code for code in nested if code.co_name == name]
    assert matching, f"{function.__qualname__} no longer defines {name} (it defines {[c.co_name for c in nested]})"
    return matching[0]


# --- training/fused_head.py: score_answer_positions_only ------------------------------------------------------


def _fused_head_has_the_name_we_replace() -> None:
    assert hasattr(trl_trainer_utils, "_use_triton"), "trl.trainer.utils has no module-level _use_triton"
    assert _parameters(trl_chunked_logprob._use_triton) == ["device"], "_use_triton no longer takes just a device"


def _fused_forward_reads_the_name_on_every_call() -> None:
    forward = _nested_code(trl_trainer_utils.add_fused_lm_head, "_fused_forward")
    # A global lookup at call time (not a closure or a default bound when the model was patched), so replacing the
    # module's name reaches models patched before.
    assert "_use_triton" in forward.co_names, "_fused_forward no longer looks up _use_triton as a module global"
    assert "_use_triton" not in forward.co_freevars


def _fused_forward_uses_the_name_only_to_choose_the_scoring() -> None:
    module_source = inspect.getsource(trl_trainer_utils)
    calls = re.findall(r"\b_use_triton\(", module_source)
    assert len(calls) == 1, f"trl.trainer.utils calls _use_triton {len(calls)} times (we replace it for 1 use)"
    forward_source = _source(trl_trainer_utils.add_fused_lm_head)
    assert "compact = _use_triton(hidden_states.device)" in forward_source, "the compact-scoring choice moved"
    assert "hidden_states[mask] if compact else" in forward_source, "compact no longer means 'score the masked'"


# --- training/dpo.py: WeightedDPOTrainer and LengthGroupedDPOTrainer ------------------------------------------


def _compute_loss_signature() -> None:
    expected = ["self", "model", "inputs", "return_outputs", "num_items_in_batch"]
    assert _parameters(DPOTrainer.compute_loss) == expected, inspect.signature(DPOTrainer.compute_loss)


def _signature_columns_hook() -> None:
    assert "_set_signature_columns_if_needed" in vars(DPOTrainer), "DPOTrainer no longer overrides it"
    assert "self._signature_columns" in _source(DPOTrainer._set_signature_columns_if_needed)
    assert "self._signature_columns" in _source(transformers.Trainer._remove_unused_columns), (
        "transformers no longer drops the dataset columns outside _signature_columns"
    )


def _loss_reads_log_probs_from_the_models_output() -> None:
    loss_source = _source(DPOTrainer._compute_loss)
    assert "outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)" in loss_source
    assert "outputs.log_probs" in loss_source
    assert "log_probs" in {field.name for field in fields(trl_trainer_utils.FusedCausalLMOutput)}


def _batches_hold_chosen_rows_then_rejected_rows() -> None:
    assert "input_ids = prompt_chosen_ids + prompt_rejected_ids" in _source(DataCollatorForPreference.torch_call)
    assert "chosen_logps, rejected_logps = logps.chunk(2, dim=0)" in _source(DPOTrainer._compute_loss)


def _loss_is_the_mean_of_per_pair_terms() -> None:
    loss_source = _source(DPOTrainer._compute_loss)
    assert "loss += per_sequence_loss.mean() * loss_weight" in loss_source, "the loss is no longer a mean over pairs"
    for loss_type in SUPPORTED_LOSS_TYPES:
        assert f'loss_type == "{loss_type}"' in loss_source, f"no {loss_type} branch in the loss"


def _reference_pass_has_no_gradient() -> None:
    assert "torch.no_grad()" in _source(DPOTrainer.compute_ref_log_probs)


def _train_sampler_hook() -> None:
    assert _parameters(transformers.Trainer._get_train_sampler) == ["self", "train_dataset"]
    assert "_get_train_sampler" not in vars(DPOTrainer), "DPOTrainer now picks its own sampler"


def _tokenized_columns() -> None:
    trainer_source = inspect.getsource(DPOTrainer)
    for column in ("prompt_ids", "chosen_ids", "rejected_ids"):
        assert f'output["{column}"] = ' in trainer_source, f"DPOTrainer's tokenization no longer writes {column}"


# --- training/evaluate.py: tokenize_pair ----------------------------------------------------------------------


def _prompt_ends_where_the_tokens_diverge() -> None:
    trainer_source = inspect.getsource(DPOTrainer)
    assert "common_prefix_length(prompt_ids, prompt_chosen_ids)" in trainer_source
    assert "common_prefix_length(prompt_ids, prompt_rejected_ids)" in trainer_source


RELIANCES = [
    Reliance(
        "training/fused_head.py: score_answer_positions_only",
        "trl.trainer.utils._use_triton(device), imported from trl.kernels.chunked_logprob",
        _fused_head_has_the_name_we_replace,
    ),
    Reliance(
        "training/fused_head.py: score_answer_positions_only",
        "add_fused_lm_head's _fused_forward looks _use_triton up in its module on every call",
        _fused_forward_reads_the_name_on_every_call,
    ),
    Reliance(
        "training/fused_head.py: score_answer_positions_only",
        "_use_triton only chooses between scoring the labelled positions and scoring them all",
        _fused_forward_uses_the_name_only_to_choose_the_scoring,
    ),
    Reliance(
        "training/dpo.py: WeightedDPOTrainer.compute_loss",
        "DPOTrainer.compute_loss(model, inputs, return_outputs, num_items_in_batch)",
        _compute_loss_signature,
    ),
    Reliance(
        "training/dpo.py: WeightedDPOTrainer._set_signature_columns_if_needed",
        "the private _signature_columns decide which dataset columns reach the collator",
        _signature_columns_hook,
    ),
    Reliance(
        "training/dpo.py: _weigh_gradients",
        "the policy pass calls the model with fused_lm_head=True and reads output.log_probs",
        _loss_reads_log_probs_from_the_models_output,
    ),
    Reliance(
        "training/dpo.py: _weigh_gradients",
        "a batch holds every pair's chosen row, then every pair's rejected row (torch.cat([weights, weights]))",
        _batches_hold_chosen_rows_then_rejected_rows,
    ),
    Reliance(
        "training/dpo.py: WeightedDPOTrainer (the gradient equals that of mean(weight x per-pair loss))",
        "DPOTrainer._compute_loss ends in per_sequence_loss.mean(), with a branch for each loss we allow",
        _loss_is_the_mean_of_per_pair_terms,
    ),
    Reliance(
        "training/dpo.py: _weigh_gradients (skips output without a gradient)",
        "the reference pass runs under torch.no_grad()",
        _reference_pass_has_no_gradient,
    ),
    Reliance(
        "training/dpo.py: LengthGroupedDPOTrainer._get_train_sampler",
        "transformers.Trainer._get_train_sampler(train_dataset), not overridden by DPOTrainer",
        _train_sampler_hook,
    ),
    Reliance(
        "training/dpo.py: LengthGroupedDPOTrainer._get_train_sampler",
        "the tokenized dataset's prompt_ids, chosen_ids and rejected_ids columns",
        _tokenized_columns,
    ),
    Reliance(
        "training/evaluate.py: tokenize_pair",
        "DPOTrainer ends the prompt where the prompt's and the prompt+answer's tokens diverge",
        _prompt_ends_where_the_tokens_diverge,
    ),
]


@pytest.mark.parametrize("reliance", RELIANCES, ids=[reliance.check.__name__.strip("_") for reliance in RELIANCES])
def test_trl_still_has_what_our_code_relies_on(reliance: Reliance) -> None:
    try:
        reliance.check()
        return
    except Exception as error:  # any failure to find it means the same: revisit our code
        problem = f"{type(error).__name__}: {error}"
    pytest.fail(
        f"TRL {trl.__version__} (transformers {transformers.__version__}) no longer has what {reliance.place} "
        f"relies on: {reliance.what}. Revisit that code before upgrading. ({problem})",
        pytrace=False,
    )
