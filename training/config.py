"""The settings of one DPO round, saved beside the adapter it produced so every adapter carries its recipe."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# How each training pair's weight is set from the votes behind it (quality.preferences.pair_weight); "none": all 1.
WEIGHTINGS = ("none", "strength", "competence", "strength+competence")
# Pairwise losses TRL computes from the chosen/rejected log-ratios alone, with no extra hyper-parameter to tune.
SUPPORTED_LOSS_TYPES = ("sigmoid", "ipo", "hinge")


@dataclass(frozen=True)
class FieldSpec:
    """One tunable field of a round: its type, default, bounds and meaning.

    The single source for RoundConfig's defaults and checks, the Start round form, the rounds API serializer and the
    ROUND_* settings (each reads this; none writes its own bounds).
    """

    name: str
    kind: type
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    allowed_values: tuple[Any, ...] = ()  # values accepted outside [minimum, maximum], e.g. -1 for "no limit"

    @property
    def setting(self) -> str:
        """The environment variable and Django setting holding the deployment's default."""
        return f"ROUND_{self.name.upper()}"

    def input_bounds(self) -> dict[str, Any]:
        """`min_value` and `max_value` for the field that reads this spec (Django's form fields and DRF's serializer
        fields take the same two keywords): the lowest value accepted, an allowed value below the minimum included
        (-1 for "no limit"), and the maximum, both whole numbers for an int field. `problem` gives the exact reason."""
        lowest = min([self.minimum, *self.allowed_values]) if self.minimum is not None else None
        highest = self.maximum
        if self.kind is int:
            lowest = int(lowest) if lowest is not None else None
            highest = int(highest) if highest is not None else None
        return {"min_value": lowest, "max_value": highest}

    def problem(self, value: Any) -> str | None:
        """Why `value` is not acceptable, or None."""
        if self.choices:
            return None if value in self.choices else f"must be one of {list(self.choices)}, got {value!r}"
        if value in self.allowed_values:
            return None
        also = "".join(f"{allowed} or " for allowed in self.allowed_values)
        if self.minimum is not None and value < self.minimum:
            return f"must be {also}>= {self.minimum:g}, got {value}"
        if self.maximum is not None and value > self.maximum:
            return f"must be {also}<= {self.maximum:g}, got {value}"
        return None


TUNABLE_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("beta", float, 0.1, "DPO's beta: how far the policy may move from its reference", 0.001, 10.0),
    # LoRA adapters need a far larger step than full fine-tuning (TRL's 1e-6 default barely moves them).
    FieldSpec("learning_rate", float, 5e-5, "optimizer step size", 1e-8, 1e-2),
    FieldSpec("epochs", int, 1, "passes over the training pairs", 1, 20),
    FieldSpec("batch_size", int, 8, "pairs per optimizer step", 1, 512),
    # A chat template alone takes about 20 tokens.
    FieldSpec("max_length", int, 256, "prompt + answer tokens; longer pairs are cut from the end", 32, 8192),
    FieldSpec("max_steps", int, -1, "stop after this many steps; -1 runs the epochs in full", 1, 1_000_000, (), (-1,)),
    # The model server also bounds it (--max-lora-rank); the Django side checks that limit too.
    FieldSpec("lora_rank", int, 16, "LoRA rank of a new adapter", 1, 256),
    FieldSpec("loss_type", str, "sigmoid", "DPO loss", choices=SUPPORTED_LOSS_TYPES),
    # Robust DPO (TRL's "robust" loss): the share of votes assumed flipped; with the sigmoid loss only.
    FieldSpec(
        "label_smoothing", float, 0.0, "robust DPO: the share of votes assumed flipped (0: plain DPO)", 0.0, 0.49
    ),
    # Read when a round writes its training file; the trainer then follows the weights that file carries.
    FieldSpec(
        "weighting",
        str,
        "none",
        "weigh each pair by its votes' strength, its voters' competence (MACE), or both",
        choices=WEIGHTINGS,
    ),
)
TUNABLE = {spec.name: spec for spec in TUNABLE_FIELDS}


def cpu_multiplies_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bf16 arithmetic (AVX-512 BF16 or AMX), the condition for bf16 autocast to pay on it.

    Without it PyTorch emulates bf16 and autocast is slower than fp32. Read from Linux's /proc/cpuinfo; False where
    that file is missing.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", cpuinfo) is not None


@dataclass(frozen=True)
class RoundConfig:
    base_model_dir: str
    output_dir: str
    # Round 2 and later: continue training this adapter, and keep a frozen copy of it as the DPO reference.
    parent_adapter_dir: str | None = None
    beta: float = TUNABLE["beta"].default
    learning_rate: float = TUNABLE["learning_rate"].default
    epochs: int = TUNABLE["epochs"].default
    batch_size: int = TUNABLE["batch_size"].default
    gradient_accumulation_steps: int = 1
    max_length: int = TUNABLE["max_length"].default
    lora_rank: int = TUNABLE["lora_rank"].default
    lora_alpha: int = 32
    # Written into adapter_config.json; TRL's DPOTrainer switches every dropout off during DPO (disable_dropout=True),
    # so that the policy and reference passes see the same network.
    lora_dropout: float = 0.05
    lora_targets: str = "all-linear"  # or comma-separated module names, e.g. "q_proj,v_proj"
    loss_type: str = TUNABLE["loss_type"].default
    label_smoothing: float = TUNABLE["label_smoothing"].default
    weighting: str = TUNABLE["weighting"].default
    seed: int = 0
    max_steps: int = TUNABLE["max_steps"].default
    # Speed levers, each measured by bench/train_cpu.py (docs/benchmarks.md, "Training speed"); defaults: the winners.
    # The reference's log-probs computed once before training (TRL's precompute_ref_log_probs), not at every step.
    precompute_reference: bool = True
    # Batches of pairs of similar length, so little is padded (the order is still random between groups).
    group_by_length: bool = True
    # Recompute activations in the backward pass: less memory, more time. Worth it only for long sequences.
    gradient_checkpointing: bool = False
    # bf16 autocast on the CPU too (fp32 master weights); on a GPU that supports it, bf16 autocast is always on. By
    # default on where the CPU multiplies bf16 natively: there its matrix products run about 4x faster than fp32.
    cpu_bf16: bool = dataclasses.field(default_factory=cpu_multiplies_bf16)
    torch_compile: bool = False
    # Memory lever (docs/benchmarks.md, "Training memory"): the most tokens one forward and backward pass may hold,
    # counted as rows x max_length (a pair is two rows). A batch larger than that runs as equal micro-batches whose
    # gradients add up before the optimizer step (gradient accumulation): the same step, with the activations held
    # at once bounded by this figure instead of by batch_size x max_length. 0: the whole batch in one pass.
    # 512 at the defaults (max_length 256): one pair a pass, 2.9 GiB peak against 3.5 GiB at 1,024 and 8.2 at no limit.
    pass_tokens: int = 512

    def __post_init__(self) -> None:
        _check_types(self)
        _check_ranges(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RoundConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown RoundConfig field(s) {unknown}; known fields are {sorted(known)}")
        required = {
            field.name
            for field in dataclasses.fields(cls)
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(values))
        if missing:
            raise ValueError(f"RoundConfig is missing required field(s) {missing}")
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> RoundConfig:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"RoundConfig is not valid JSON: {error}") from error
        if not isinstance(values, dict):
            raise ValueError(f"RoundConfig JSON must be an object, got {type(values).__name__}")
        return cls.from_dict(values)


def _check_types(config: RoundConfig) -> None:
    hints = typing.get_type_hints(RoundConfig)
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        allowed = typing.get_args(hints[field.name]) or (hints[field.name],)
        if not any(_is_instance(value, kind) for kind in allowed):
            names = " or ".join("null" if kind is type(None) else kind.__name__ for kind in allowed)
            raise ValueError(f"RoundConfig.{field.name} must be {names}, got {value!r}")


def _is_instance(value: object, kind: type) -> bool:
    if isinstance(value, bool):  # JSON true/false must not pass for 1/0
        return kind is bool
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)


def _check_ranges(config: RoundConfig) -> None:
    problems = []
    for spec in TUNABLE_FIELDS:
        problem = spec.problem(getattr(config, spec.name))
        if problem:
            problems.append(f"{spec.name} {problem}")
    for name in ("base_model_dir", "output_dir", "lora_targets"):
        if not getattr(config, name).strip():
            problems.append(f"{name} must not be empty")
    if not config.lora_alpha > 0:
        problems.append(f"lora_alpha must be > 0, got {config.lora_alpha}")
    if config.gradient_accumulation_steps < 1:
        problems.append(f"gradient_accumulation_steps must be >= 1, got {config.gradient_accumulation_steps}")
    if not 0 <= config.lora_dropout < 1:
        problems.append(f"lora_dropout must be in [0, 1), got {config.lora_dropout}")
    if config.label_smoothing > 0 and config.loss_type != "sigmoid":
        problems.append(f"label_smoothing needs the sigmoid loss (robust DPO), not {config.loss_type!r}")
    if config.pass_tokens < 0:
        problems.append(f"pass_tokens must be >= 0 (0: no limit), got {config.pass_tokens}")
    if config.seed < 0:
        problems.append(f"seed must be >= 0, got {config.seed}")
    if problems:
        raise ValueError("invalid RoundConfig: " + "; ".join(problems))
