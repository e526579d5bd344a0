"""One round of DPO with a LoRA adapter, on TRL's DPOTrainer.

Round 1 trains a fresh adapter on the base model; TRL's reference is then the base model (adapter disabled).
Round n > 1 continues from the parent round's adapter; TRL then keeps a frozen copy of that adapter (named "ref")
as the reference, so each round is pulled towards the votes while staying close to the policy that produced them.

Writes into config.output_dir:
    config.json     the exact RoundConfig
    metrics.jsonl   one JSON object per optimizer step, appended while training runs
    adapter/        the PEFT adapter (adapter_config.json + adapter_model.safetensors), what vLLM loads
    result.json     runtime, steps and final metrics, written last: its presence means the round finished
    dataset/        several processes only: the training pairs and TRL's caches of them, which they share

Under a launcher of several processes (`torchrun --standalone --nproc-per-node N -m training ...`, or `accelerate
launch`) the processes train one adapter together, data-parallel: on GPUs over NCCL, on the CPU over gloo. Only the
main process (rank 0) writes these files and scores the held-out pairs; the others train their share and end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import torch
from accelerate import PartialState
from datasets import Dataset, Value, load_from_disk
from peft import LoraConfig, PeftModel
from torch.utils.data import Sampler
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from trl import DPOConfig, DPOTrainer
from trl import __version__ as trl_version

from training.config import RoundConfig
from training.data import PreferenceRow, load_pairs, weights_to_mean_one
from training.evaluate import (
    EvalResult,
    ReferenceCache,
    TokenizedPair,
    active_adapter,
    compare_against_base,
    model_cache_key,
    pair_length,
    tokenize_rows,
)
from training.fused_head import score_answer_positions_only
from training.warm import preloaded_model_take

ADAPTER_DIR = "adapter"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
DATASET_DIR = "dataset"
# What a finished round leaves behind; training into a directory that holds any of them would mix two rounds.
ROUND_OUTPUTS = (ADAPTER_DIR, METRICS_FILE, RESULT_FILE)


@dataclass(frozen=True)
class TrainResult:
    output_dir: str
    adapter_dir: str
    steps: int
    pairs: int  # pairs trained on, after TRL drops those whose prompt alone fills max_length
    runtime_seconds: float
    train_loss: float
    final_metrics: dict[str, Any]  # the last metrics.jsonl line
    load_seconds: float = 0.0  # reading the pairs, loading the model and TRL's preparation of the data
    evaluate_seconds: float = 0.0  # scoring the held-out pairs (train_and_evaluate_round only)
    # The training reference's log-probs: pairs found in the reference cache, pairs scored (both 0 without a cache)
    reference_hits: int = 0
    reference_misses: int = 0


def train_round(
    config: RoundConfig, dataset_path: Path | str, reference_cache: ReferenceCache | None = None
) -> TrainResult:
    """Train one DPO round on the pairs in dataset_path and write its outputs (see the module docstring)."""
    return run_training(config, dataset_path, reference_cache)[1]


def train_and_evaluate_round(
    config: RoundConfig,
    dataset_path: Path | str,
    heldout_path: Path | str,
    reference_cache: ReferenceCache,
    batch_size: int | None = None,
) -> tuple[TrainResult, dict[str, EvalResult] | None]:
    """Train one round, then score it in the same process (the model is loaded once) on held-out pairs.

    The candidate ("candidate") and its parent ("parent": the parent adapter, or the base model in round 1) are
    both scored against the base model, the fixed reference; see training.evaluate.compare_against_base. Under a
    launcher of several processes only the main one scores (once, and alone writes the reference cache); the others
    get None for the scores.
    """
    heldout = load_pairs(heldout_path)  # refused before training starts if it is bad
    trainer, result = run_training(config, dataset_path, reference_cache)
    if not trainer.accelerator.is_main_process:
        return result, None
    started = time.monotonic()
    # Without accelerate's autocast wrapper: the held-out pairs are scored in fp32, like the cached base log-probs
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    model.eval()
    tokenizer = trainer.processing_class
    # TRL keeps the parent adapter, frozen and unchanged, as "ref" (round 2 and later): that is the parent model.
    policies = {"candidate": "default", "parent": "ref" if config.parent_adapter_dir else None}
    scores = compare_against_base(
        model,
        tokenizer,
        model_cache_key(config.base_model_dir),
        heldout,
        policies,
        config.beta,
        config.max_length,
        batch_size or config.batch_size,
        reference_cache,
    )
    return dataclasses.replace(result, evaluate_seconds=round(time.monotonic() - started, 3)), scores


def run_training(
    config: RoundConfig, dataset_path: Path | str, reference_cache: ReferenceCache | None = None
) -> tuple[DPOTrainer, TrainResult]:
    """`train_round`, also returning the trainer (its model holds the trained adapter, "default")."""
    output_dir = Path(config.output_dir)
    # Every process looks before the main one writes any of them: with several processes, the main one writes only
    # after they all met while building the trainer (dataset_shared_on_disk), which each reaches after this check.
    leftovers = [name for name in ROUND_OUTPUTS if (output_dir / name).exists()]
    if leftovers:
        raise FileExistsError(f"{output_dir} already holds the outputs of a round ({', '.join(leftovers)})")
    started = time.monotonic()
    rows = load_pairs(dataset_path)
    metrics_path = output_dir / METRICS_FILE
    metrics = MetricsFileCallback(metrics_path)
    before = (reference_cache.hits, reference_cache.misses) if reference_cache is not None else (0, 0)
    trainer = build_trainer(config, rows, callbacks=[metrics], reference_cache=reference_cache)
    after = (reference_cache.hits, reference_cache.misses) if reference_cache is not None else (0, 0)
    load_seconds = round(time.monotonic() - started, 3)

    is_main_process = trainer.accelerator.is_main_process
    if is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / CONFIG_FILE).write_text(config.to_json())
        metrics_path.write_text("")
    output = trainer.train()

    adapter_dir = output_dir / ADAPTER_DIR
    policy = trainer.accelerator.unwrap_model(trainer.model)
    # Only the trained adapter: TRL's frozen "ref" copy (round 2 and later) would land in a sub-folder.
    policy.save_pretrained(str(adapter_dir), selected_adapters=["default"], is_main_process=is_main_process)
    result = TrainResult(
        output_dir=str(output_dir),
        adapter_dir=str(adapter_dir),
        steps=output.global_step,
        pairs=trained_pair_count(trainer),
        runtime_seconds=float(output.metrics["train_runtime"]),
        train_loss=float(output.training_loss),
        final_metrics=metrics.last_record,
        load_seconds=load_seconds,
        reference_hits=after[0] - before[0],
        reference_misses=after[1] - before[1],
    )
    if is_main_process:
        (output_dir / RESULT_FILE).write_text(json.dumps(dataclasses.asdict(result), indent=2) + "\n")
    return trainer, result


def is_main_process() -> bool:
    """Whether this process writes a round's files and reports: the only one, or rank 0 of those a launcher started.

    Accelerate's view of the processes, as the trainer set it up: ask after `run_training`.
    """
    return PartialState().is_main_process


def build_trainer(
    config: RoundConfig,
    rows: Sequence[PreferenceRow],
    callbacks: Sequence[TrainerCallback] = (),
    reference_cache: ReferenceCache | None = None,
    reference_deadline: float | None = None,
) -> DPOTrainer:
    """The DPOTrainer for one round, ready to `.train()`. With a reference cache, the reference pass takes the pairs
    it holds from it and adds those it scores (see WeightedDPOTrainer); with a deadline too (a time.monotonic()
    value), the pass stops there with ReferencePassStopped, what it scored saved."""
    tokenizer = AutoTokenizer.from_pretrained(config.base_model_dir)
    score_answer_positions_only(enabled=not config.torch_compile)  # before TRL's reference pass in the constructor
    trainer_class = LengthGroupedDPOTrainer if config.group_by_length else WeightedDPOTrainer
    arguments = dpo_arguments(config)  # also joins the processes of a launcher into one group
    dataset = Dataset.from_list(rows_weighted_to_mean_one(rows))
    if arguments.world_size > 1:
        dataset = dataset_shared_on_disk(dataset, Path(config.output_dir) / DATASET_DIR, arguments)
    trainer = trainer_class(
        model=load_policy(config),
        ref_model=None,  # PEFT: base with the adapter disabled (round 1) or a frozen copy of the parent adapter
        args=arguments,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=None if config.parent_adapter_dir else lora_config(config),
        callbacks=list(callbacks),
        # Without a file, a cache in memory: the pass is the same (each pair alone), only nothing is kept
        reference_cache=reference_cache if reference_cache is not None else ReferenceCache(None),
        reference_key=reference_key(config),
        reference_deadline=reference_deadline,
    )
    if trained_pair_count(trainer) == 0:
        raise ValueError(f"every pair's prompt fills max_length={config.max_length} tokens: nothing left to train on")
    return trainer


def dataset_shared_on_disk(dataset: Dataset, directory: Path, arguments: TrainingArguments) -> Dataset:
    """The dataset as files in `directory`, written by the main process and read by every process.

    TRL's precomputed reference log-probs go to a cache file beside the dataset's files, written by the main process
    and then read by all: for a dataset held in memory that is each process's own temporary folder, where the others
    find nothing. On disk, TRL's tokenized copy is also made once, by the main process, and read by the others.
    """
    with arguments.main_process_first(local=False, desc="the training pairs, written for every process"):
        if arguments.process_index == 0:
            shutil.rmtree(directory, ignore_errors=True)  # a killed run's leftovers
            dataset.save_to_disk(str(directory))
        return load_from_disk(str(directory))


WEIGHT: Final = "weight"


def rows_weighted_to_mean_one(rows: Sequence[PreferenceRow]) -> list[dict[str, Any]]:
    """The rows as plain dicts, their weights (if they carry any; load_pairs refused all-zero ones) scaled to
    average 1 over the rows (training.data.weights_to_mean_one)."""
    if not rows or WEIGHT not in rows[0]:
        return [dict(row) for row in rows]
    scaled = weights_to_mean_one([row[WEIGHT] for row in rows])
    return [{**row, WEIGHT: weight} for row, weight in zip(rows, scaled, strict=True)]


class WeightedDPOTrainer(DPOTrainer):
    """DPOTrainer where each pair's loss counts in proportion to its "weight" column, when the dataset has one.

    TRL 1.16 has no per-pair weight for DPO, and its loss is one long method ending in `per_sequence_loss.mean()`.
    Rather than copy that method, the weights act on the gradient: a hook scales the gradient reaching each pair's
    policy log-probs (its chosen row and its rejected row) by the pair's weight. For a loss where each pair's term
    depends only on that pair's log-probs (sigmoid, hinge, IPO, robust: every loss a round may use) this is exactly
    the gradient of mean(weight x per-pair loss). The logged loss and rewards stay the unweighted ones. Without a
    weight column nothing changes: the trainer is DPOTrainer.
    """

    def __init__(
        self,
        *args: Any,
        reference_cache: ReferenceCache | None = None,
        reference_key: str = "",
        reference_deadline: float | None = None,
        **kwargs: Any,
    ) -> None:
        # Read by the reference pass, which runs inside DPOTrainer's constructor
        self.reference_cache = reference_cache
        self.reference_key = reference_key
        self.reference_deadline = reference_deadline
        super().__init__(*args, **kwargs)
        # The reference log-probs were precomputed above with TRL's collator, which must not see the weights (they
        # would reach the model as an argument); training batches carry them.
        if WEIGHT in cast(Dataset, self.train_dataset).column_names:
            self.data_collator = _WithWeights(self.data_collator)

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        """The reference's log-probs of every pair, each pair scored alone, those in the reference cache read from it.

        TRL's own pass (taken without a cache, by a launcher's several processes and on a GPU) scores batches of
        `batch_size` pairs padded to their longest; in bf16 the padding moves a sum by up to a few tenths of a nat, so
        the same pair scored in another batch differs. Alone, a pair's log-probs depend on nothing but the pair, the
        reference and the arithmetic (`reference_key`): the value a trainer scored while idle is the value this round
        would compute, bit for bit (tests/training/test_prescore.py). Scored in eval mode, under the same autocast
        as TRL's pass; no slower here than TRL's batches of 8 (no padding to compute).
        """
        if self.reference_cache is None or self.accelerator.num_processes > 1 or self.accelerator.device.type != "cpu":
            # A GPU scores a padded batch about as fast as one pair: TRL's batches there, as before (nothing
            # prescores on a GPU host: annotate.rounds.prescore runs where rounds start warm, on CPUs)
            return super()._precompute_ref_logps(dataset, name, batch_size)
        pairs = [
            TokenizedPair(list(prompt), list(chosen), list(rejected))
            for prompt, chosen, rejected in zip(
                dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True
            )
        ]
        max_length = cast(DPOConfig, self.args).max_length or 0
        scores = self.reference_cache.scores_by(self.reference_key, pairs, max_length, self._reference_scores_alone)
        dataset = dataset.add_column("ref_chosen_logps", [score[0] for score in scores])
        dataset = dataset.add_column("ref_rejected_logps", [score[1] for score in scores])
        for column in ("ref_chosen_logps", "ref_rejected_logps"):
            dataset = dataset.cast_column(column, Value("float32"))  # as TRL's pass stores them
        return dataset

    def _reference_scores_alone(self, pairs: list[TokenizedPair]) -> Iterator[tuple[float, float]]:
        device = self.accelerator.device
        model = cast(torch.nn.Module, self.model)
        training = model.training
        model.eval()
        try:
            for pair in pairs:
                if self.reference_deadline is not None and time.monotonic() >= self.reference_deadline:
                    raise ReferencePassStopped(f"the deadline came with {len(pairs)} pairs not all scored")
                example = {
                    "prompt_ids": pair.prompt_ids,
                    "chosen_ids": pair.chosen_ids,
                    "rejected_ids": pair.rejected_ids,
                }
                inputs = {key: value.to(device) for key, value in self.data_collator([example]).items()}
                chosen, rejected = self.compute_ref_log_probs(model, inputs)
                # float32 as computed; a Python float holds it exactly, and the cast back gives the same bits
                yield float(chosen.float().item()), float(rejected.float().item())
        finally:
            model.train(training)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None and WEIGHT not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, WEIGHT]  # else Trainer drops the column

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        weights = inputs.pop(WEIGHT, None)  # (pairs,)
        if weights is None or not torch.is_grad_enabled():
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        handle = model.register_forward_hook(_weigh_gradients(weights))
        try:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        finally:
            handle.remove()


class _WithWeights:
    """TRL's collator, plus the batch's weights as a float tensor (pairs,)."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator([{k: v for k, v in example.items() if k != WEIGHT} for example in examples])
        batch[WEIGHT] = torch.tensor([example[WEIGHT] for example in examples], dtype=torch.float32)
        return batch


def _weigh_gradients(weights: torch.Tensor) -> Any:
    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        log_probs = getattr(output, "log_probs", None)  # (2 x pairs, tokens): chosen rows, then rejected rows
        if log_probs is None or not log_probs.requires_grad:
            return  # the reference pass (no gradient) goes through the same model
        per_row = torch.cat([weights, weights]).to(log_probs.device, log_probs.dtype)  # (2 x pairs,)
        log_probs.register_hook(lambda gradient: gradient * per_row[:, None])

    return hook


class LengthGroupedDPOTrainer(WeightedDPOTrainer):
    """WeightedDPOTrainer whose batches hold pairs of similar length, so little of each batch is padding.

    transformers' `train_sampling_strategy="group_by_length"` does not fit: it reads lengths from an `input_ids`
    column that a preference dataset lacks, and below 4 x 4 batches it groups nothing (a round of 32 pairs is 4).
    """

    def _get_train_sampler(self, train_dataset: Any = None) -> Sampler[int]:
        dataset = cast(Dataset, self.train_dataset)
        max_length = cast(DPOConfig, self.args).max_length or 10**9
        lengths = [
            min(max_length, len(prompt) + max(len(chosen), len(rejected)))
            for prompt, chosen, rejected in zip(
                dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True
            )
        ]
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return LengthGroupedSampler(lengths, batch, torch.Generator().manual_seed(self.args.seed))


class LengthGroupedSampler(Sampler[int]):
    """Every index once per pass, in batches of similar length, the batches in random order.

    Each pass shuffles the indices, sorts each window of WINDOW_BATCHES batches by length, cuts it into batches and
    shuffles the batches: pairs still meet different partners from pass to pass, and steps do not go from long to short.
    """

    WINDOW_BATCHES = 50

    def __init__(self, lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.generator = generator

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        shuffled = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        window = self.WINDOW_BATCHES * self.batch_size
        batches = []
        for start in range(0, len(shuffled), window):
            ordered = sorted(shuffled[start : start + window], key=lambda index: self.lengths[index])
            batches += [ordered[low : low + self.batch_size] for low in range(0, len(ordered), self.batch_size)]
        for position in torch.randperm(len(batches), generator=self.generator).tolist():
            yield from batches[position]


class ReferencePassStopped(Exception):
    """The reference pass reached its deadline (prescoring: the trainer's idle time is measured out in slices)."""


def reference_key(config: RoundConfig) -> str:
    """What the training reference's log-probs of a pair depend on, besides the pair and max_length: the base model,
    the parent adapter's contents (round 2 and later), the arithmetic (bf16 autocast or fp32, torch's version, the
    CPU threads: a sum's rounding can change with the way a product is split), and TRL's version."""
    parent = "base"
    if config.parent_adapter_dir:
        digest = hashlib.sha256()
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            digest.update((Path(config.parent_adapter_dir) / name).read_bytes())
        parent = f"adapter {digest.hexdigest()}"
    bf16 = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else config.cpu_bf16
    arithmetic = f"{'bf16' if bf16 else 'fp32'}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    return f"training reference: {model_cache_key(config.base_model_dir)}, {parent}, {arithmetic}, trl {trl_version}"


def prescore(
    config: RoundConfig,
    rows: Sequence[PreferenceRow],
    heldout: Sequence[PreferenceRow],
    cache: ReferenceCache,
    seconds: float,
) -> dict[str, Any]:
    """Score into `cache`, for at most about `seconds`, what the next round on `config` would compute first: the
    training reference's log-probs of `rows` and the base model's of the `heldout` pairs. Returns what it did;
    "complete" is false when time ran out first (what was scored is saved: the next call goes on from there)."""
    deadline = time.monotonic() + seconds
    report: dict[str, Any] = {"complete": False, "train_pairs": len(rows), "heldout_pairs": len(heldout)}
    try:
        trainer = build_trainer(config, rows, reference_cache=cache, reference_deadline=deadline)
    except ReferencePassStopped:
        report.update(scored=cache.misses, held=cache.hits)
        return report
    report.update(scored=cache.misses, held=cache.hits)
    if heldout:
        model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
        model.eval()
        before = (cache.hits, cache.misses)
        # Slices of a batch, so that the deadline holds here too; the evaluation scores them the same way
        tokenizer: Any = trainer.processing_class
        pairs, _ = tokenize_rows(tokenizer, heldout, config.max_length)
        # In the order score_pairs batches them, so that on a first round the slices are the evaluation's batches
        pairs.sort(key=pair_length)
        key = model_cache_key(config.base_model_dir)
        for start in range(0, len(pairs), config.batch_size):
            if time.monotonic() >= deadline:
                break
            with active_adapter(model, None):
                cache.scores(model, key, pairs[start : start + config.batch_size], config.max_length,
                             config.batch_size, tokenizer.pad_token_id)  # fmt: skip
        else:
            report["complete"] = True
        report["heldout_scored"] = cache.misses - before[1]
        report["heldout_held"] = cache.hits - before[0]
    else:
        report["complete"] = True
    return report


def trained_pair_count(trainer: DPOTrainer) -> int:
    return len(cast(Dataset, trainer.train_dataset))  # given a Dataset, TRL's preprocessing returns one


def base_model_read(model_dir: Path | str) -> PreTrainedModel:
    """The base model in fp32 (bf16 weights swallow small updates)."""
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def load_policy(config: RoundConfig) -> PreTrainedModel | PeftModel:
    """The base model, with the parent adapter made trainable if any. In a child of `python -m training warm`, the
    base model that server read (training.warm)."""
    model = preloaded_model_take(config.base_model_dir) or base_model_read(config.base_model_dir)
    if config.parent_adapter_dir is None:
        return model
    if not (Path(config.parent_adapter_dir) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"parent_adapter_dir {config.parent_adapter_dir} holds no adapter_config.json")
    # The parent's LoRA shape (rank, alpha, targets) carries over; the lora_* fields of this config do not apply.
    return PeftModel.from_pretrained(model, config.parent_adapter_dir, is_trainable=True)


def lora_config(config: RoundConfig) -> LoraConfig:
    targets: str | list[str] = config.lora_targets
    if targets != "all-linear":
        targets = [name.strip() for name in config.lora_targets.split(",") if name.strip()]
    return LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )


def dpo_arguments(config: RoundConfig) -> DPOConfig:
    on_gpu = torch.cuda.is_available()
    return DPOConfig(
        output_dir=config.output_dir,
        beta=config.beta,
        # Label smoothing turns DPO's sigmoid loss into robust DPO (TRL's own "robust" loss, which reads it).
        loss_type=["robust" if config.label_smoothing > 0 else config.loss_type],
        label_smoothing=config.label_smoothing,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        # A batch too large for one pass (config.pass_tokens) is split into micro-batches: the same step in less memory
        per_device_train_batch_size=pairs_per_pass(config),
        gradient_accumulation_steps=config.gradient_accumulation_steps * (config.batch_size // pairs_per_pass(config)),
        max_length=config.max_length,
        seed=config.seed,
        # Weights stay fp32 (bf16 weights swallow small updates); the passes autocast to bf16 on a GPU that has it,
        # and on a CPU with bf16 arithmetic unless the config says otherwise (docs/benchmarks.md, "Training speed").
        bf16=(on_gpu and torch.cuda.is_bf16_supported()) or (not on_gpu and config.cpu_bf16),
        # Without a GPU, say so: transformers then allows bf16 there, and accelerate joins the processes of a launcher
        # into one data-parallel group over gloo (over NCCL on GPUs). Not told, it leaves each process to train the
        # whole round alone, every one of them rank 0 writing the same files.
        use_cpu=not on_gpu,
        # Every trainable parameter (the adapter being trained) takes part in every pass: DDP need not search the
        # graph for unused ones at each step (transformers' default does, and warns that it found none).
        ddp_find_unused_parameters=False,
        precompute_ref_log_probs=config.precompute_reference,
        # The reference pass keeps no activations for a backward pass: whole batches, whatever pass_tokens says
        precompute_ref_batch_size=config.batch_size,
        gradient_checkpointing=config.gradient_checkpointing,
        torch_compile=config.torch_compile,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        push_to_hub=False,
        disable_tqdm=True,
    )


def pairs_per_pass(config: RoundConfig) -> int:
    """Pairs in one forward and backward pass: the largest divisor of batch_size whose rows (two a pair) at max_length
    fit in config.pass_tokens, or 1 when not even one pair fits; the whole batch when pass_tokens is 0.

    A divisor, so that every micro-batch of a step holds as many pairs: the mean of their mean losses is then the
    batch's mean loss, and the step the one a single pass would take (Trainer divides each micro-batch's loss by their
    number).
    """
    if config.pass_tokens == 0:
        return config.batch_size
    fitting = max(1, config.pass_tokens // (2 * config.max_length))
    return max(size for size in range(1, min(fitting, config.batch_size) + 1) if config.batch_size % size == 0)


class MetricsFileCallback(TrainerCallback):
    """Append one JSON line per logging step to `path` while training runs, so a UI can follow the round."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started = time.monotonic()
        self.last_record: dict[str, Any] = {}

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.started = time.monotonic()

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # The end-of-training summary is logged too; it has no "loss" and goes to result.json instead.
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        record = metrics_record(
            logs,
            step=state.global_step,
            max_steps=state.max_steps,
            epoch=state.epoch or 0.0,
            elapsed_seconds=time.monotonic() - self.started,
            now=time.time(),
        )
        with self.path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")
        self.last_record = record


def metrics_record(
    logs: Mapping[str, Any], step: int, max_steps: int, epoch: float, elapsed_seconds: float, now: float
) -> dict[str, Any]:
    """One metrics.jsonl line: TRL's logged values plus progress, throughput and time left."""
    record: dict[str, Any] = {
        "step": step,
        "max_steps": max_steps,
        "epoch": epoch,
        "time": now,
        "elapsed_seconds": elapsed_seconds,
        "tokens_per_second": logs.get("num_tokens", 0) / elapsed_seconds if elapsed_seconds > 0 else 0.0,
        "eta_seconds": elapsed_seconds / step * (max_steps - step) if step > 0 else None,
    }
    for key, value in logs.items():
        if isinstance(value, int | float) and key not in record:
            # NaN and infinity are not JSON: readers (and PostgreSQL's jsonb) would refuse the whole line
            record[key] = value if math.isfinite(value) else None
    return record
