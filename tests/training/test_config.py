from __future__ import annotations

import dataclasses
import json

import pytest

from training.config import TUNABLE_FIELDS, FieldSpec, RoundConfig, cpu_multiplies_bf16

REQUIRED = {"base_model_dir": "/models/base", "output_dir": "/runs/round-1"}


def test_defaults_are_the_documented_ones() -> None:
    config = RoundConfig(**REQUIRED)

    assert config.parent_adapter_dir is None
    assert (config.beta, config.learning_rate, config.epochs, config.batch_size) == (0.1, 5e-5, 1, 8)
    assert (config.lora_rank, config.lora_alpha, config.lora_targets) == (16, 32, "all-linear")
    assert (config.loss_type, config.max_length, config.max_steps) == ("sigmoid", 256, -1)


def test_json_round_trip_keeps_every_field() -> None:
    config = RoundConfig(**REQUIRED, parent_adapter_dir="/runs/round-0/adapter", beta=0.2, loss_type="ipo", seed=7)

    again = RoundConfig.from_json(config.to_json())

    assert again == config
    assert json.loads(config.to_json()) == dataclasses.asdict(config)


def test_integer_is_accepted_where_a_float_is_expected() -> None:
    assert RoundConfig.from_dict({**REQUIRED, "beta": 1}).beta == 1


def test_unknown_field_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match=r"unknown RoundConfig field\(s\) \['learning_rat'\]"):
        RoundConfig.from_dict({**REQUIRED, "learning_rat": 1e-4})


def test_missing_required_field_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match=r"missing required field\(s\) \['output_dir'\]"):
        RoundConfig.from_dict({"base_model_dir": "/models/base"})


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_supported_loss_types_are_accepted(loss_type: str) -> None:
    assert RoundConfig(**REQUIRED, loss_type=loss_type).loss_type == loss_type


def test_unknown_loss_type_lists_the_supported_ones() -> None:
    with pytest.raises(ValueError, match=r"loss_type must be one of \['sigmoid', 'ipo', 'hinge'\], got 'kto'"):
        RoundConfig(**REQUIRED, loss_type="kto")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("beta", 0.0, "beta must be >= 0.001"),
        ("beta", 11.0, "beta must be <= 10"),
        ("learning_rate", -1e-5, "learning_rate must be >= 1e-08"),
        ("epochs", 21, "epochs must be <= 20"),
        ("lora_rank", 257, "lora_rank must be <= 256"),
        ("epochs", 0, "epochs must be >= 1"),
        ("batch_size", 0, "batch_size must be >= 1"),
        ("gradient_accumulation_steps", 0, "gradient_accumulation_steps must be >= 1"),
        ("lora_rank", 0, "lora_rank must be >= 1"),
        ("lora_dropout", 1.0, r"lora_dropout must be in \[0, 1\)"),
        ("max_length", 8, "max_length must be >= 32"),
        ("max_steps", 0, "max_steps must be -1 or >= 1"),
        ("max_steps", -2, "max_steps must be -1 or >= 1"),
        ("seed", -1, "seed must be >= 0"),
        ("pass_tokens", -1, r"pass_tokens must be >= 0 \(0: no limit\)"),
        ("output_dir", " ", "output_dir must not be empty"),
    ],
)
def test_out_of_range_values_are_rejected_with_the_field_name(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RoundConfig.from_dict({**REQUIRED, field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [("batch_size", "8"), ("batch_size", 8.0), ("batch_size", True), ("beta", "0.1"), ("parent_adapter_dir", 3)],
)
def test_wrong_types_are_rejected(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"RoundConfig.{field} must be"):
        RoundConfig.from_dict({**REQUIRED, field: value})


@pytest.mark.parametrize(("text", "message"), [("{", "not valid JSON"), ("[1, 2]", "must be an object")])
def test_from_json_rejects_what_is_not_a_json_object(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RoundConfig.from_json(text)


def test_label_smoothing_is_robust_dpo_and_needs_the_sigmoid_loss() -> None:
    from training.dpo import dpo_arguments

    config = RoundConfig(**REQUIRED, label_smoothing=0.1)
    arguments = dpo_arguments(config)
    assert arguments.loss_type == ["robust"] and arguments.label_smoothing == 0.1
    assert dpo_arguments(RoundConfig(**REQUIRED)).loss_type == ["sigmoid"]
    with pytest.raises(ValueError, match="needs the sigmoid loss"):
        RoundConfig(**REQUIRED, label_smoothing=0.1, loss_type="ipo")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("flags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n", True),
        ("flags\t\t: fpu avx512f amx_bf16 amx_tile\n", True),
        ("flags\t\t: fpu avx2 avx512f avx512_vnni\n", False),  # AVX-512 alone: bf16 is emulated there
        ("", False),
    ],
)
def test_bf16_autocast_on_the_cpu_only_where_it_multiplies_bf16(flags: str, expected: bool) -> None:
    assert cpu_multiplies_bf16(flags) is expected


def test_a_saved_config_without_cpu_bf16_takes_this_machines_default() -> None:
    config = RoundConfig.from_dict(REQUIRED)

    assert config.cpu_bf16 is cpu_multiplies_bf16()
    assert RoundConfig.from_json(config.to_json()) == config


def test_input_bounds_take_in_the_allowed_values_below_the_minimum() -> None:
    fields = {spec.name: spec for spec in TUNABLE_FIELDS}

    assert fields["max_steps"].input_bounds() == {"min_value": -1, "max_value": 1_000_000}  # -1: run the epochs
    assert fields["beta"].input_bounds() == {"min_value": 0.001, "max_value": 10.0}
    assert fields["loss_type"].input_bounds() == {"min_value": None, "max_value": None}  # a choice, not a number


def test_an_int_fields_bounds_are_whole_numbers() -> None:
    spec = FieldSpec("lora_rank", int, 16, "LoRA rank", 1.0, 64.0)

    bounds = spec.input_bounds()

    assert bounds == {"min_value": 1, "max_value": 64}
    assert all(type(bound) is int for bound in bounds.values())
