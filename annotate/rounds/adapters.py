"""The adapter store: where a round's trained adapter is published for every model server (and the next round).

The trainer writes its output under ROUND_DIR, on its own disk; the model servers may run on other hosts. A finished
round's adapter is copied into ADAPTER_STORE_DIR under its version's name, a directory every trainer and model server
mounts at the same path. The copy is made beside the target and renamed into place, so a server never reads a
half-written adapter, and a trainer killed mid-copy leaves only a hidden partial directory that the next publish
clears. Names are never reused for other weights (each version's name carries its round), which is also what vLLM's
LoRA filesystem resolver needs when it is pointed at the same directory (VLLM_LORA_RESOLVER_CACHE_DIR).
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from django.conf import settings

PARTIAL_PREFIX = ".partial-"


def adapter_store_path(name: str) -> Path:
    """The directory a version named `name` is published to (what the model servers are told to load)."""
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise ValueError(f"not a version name the store can hold: {name!r}")
    return Path(settings.ADAPTER_STORE_DIR) / name


def _partials_clear(store: Path, name: str) -> None:
    for partial in store.glob(f"{PARTIAL_PREFIX}{name}-*"):
        shutil.rmtree(partial, ignore_errors=True)


def adapter_publish(*, source: Path, name: str) -> Path:
    """Copy the adapter directory `source` into the store as `name`, atomically, and return its path there.

    Publishing the same name again (a round's deploy retried) replaces the earlier copy as a whole."""
    if not (source / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{source} holds no adapter (adapter_config.json is missing)")
    target = adapter_store_path(name)
    store = target.parent
    store.mkdir(parents=True, exist_ok=True)
    _partials_clear(store, name)
    partial = store / f"{PARTIAL_PREFIX}{name}-{secrets.token_hex(4)}"
    shutil.copytree(source, partial)
    for path in partial.rglob("*"):
        if path.is_file():
            with path.open("rb") as copied:
                os.fsync(copied.fileno())
    if target.exists():
        # A directory cannot be renamed over a non-empty one: set the old copy aside first, then drop it.
        stale = store / f"{PARTIAL_PREFIX}{name}-replaced-{secrets.token_hex(4)}"
        target.rename(stale)
        partial.rename(target)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        partial.rename(target)
    return target
