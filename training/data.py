"""Preference pairs in TRL's conversational format, one JSON object a line, e.g.

{"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
 "rejected": [{"role": "assistant", "content": "Go away."}]}

The prompt is the conversation so far (system, user and assistant turns, ending with a user turn); chosen and
rejected are the assistant's two answers, the first preferred by a human.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Message = dict[str, str]
PreferenceRow = dict[str, list[Message]]

PROMPT_ROLES = ("system", "user", "assistant")
MAX_ERRORS_SHOWN = 20


def load_pairs(path: Path | str) -> list[PreferenceRow]:
    """Read and validate a JSON Lines file of preference pairs.

    Blank lines are skipped; keys other than prompt/chosen/rejected (ids, metadata) are dropped. Raises ValueError
    listing every bad line (`path:line: reason`) when any line is invalid, so nothing trains on half a file.
    """
    path = Path(path)
    rows: list[PreferenceRow] = []
    errors: list[str] = []
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rows.append(parse_pair(json.loads(line)))
            except json.JSONDecodeError as error:
                errors.append(f"{path}:{line_number}: not valid JSON ({error.msg})")
            except ValueError as error:
                errors.append(f"{path}:{line_number}: {error}")
    if errors:
        shown = errors[:MAX_ERRORS_SHOWN]
        more = f"\n... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        raise ValueError(f"{len(errors)} invalid preference pair(s):\n" + "\n".join(shown) + more)
    if not rows:
        raise ValueError(f"{path} holds no preference pairs")
    return rows


def parse_pair(value: Any) -> PreferenceRow:
    """Validate one decoded row and return it with only the prompt/chosen/rejected keys."""
    if not isinstance(value, dict):
        raise ValueError(f"a pair must be a JSON object, got {type(value).__name__}")
    missing = [key for key in ("prompt", "chosen", "rejected") if key not in value]
    if missing:
        raise ValueError(f"missing key(s) {missing}")
    prompt = _parse_messages(value["prompt"], "prompt", PROMPT_ROLES)
    if prompt[-1]["role"] != "user":
        raise ValueError("the prompt must end with a user message")
    chosen = _parse_messages(value["chosen"], "chosen", ("assistant",))
    rejected = _parse_messages(value["rejected"], "rejected", ("assistant",))
    if chosen == rejected:
        raise ValueError("chosen and rejected are identical: the pair carries no preference")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _parse_messages(value: Any, key: str, roles: Sequence[str]) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{key} must be a non-empty list of messages")
    messages = []
    for index, message in enumerate(value):
        where = f"{key}[{index}]"
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise ValueError(f'{where} must be an object with exactly the keys "role" and "content"')
        if message["role"] not in roles:
            raise ValueError(f"{where}.role must be one of {list(roles)}, got {message['role']!r}")
        if not isinstance(message["content"], str):
            raise ValueError(f"{where}.content must be a string")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def split_by_prompt(
    rows: Sequence[PreferenceRow], holdout_fraction: float, seed: int
) -> tuple[list[PreferenceRow], list[PreferenceRow]]:
    """Split into (train, holdout) so that pairs sharing a prompt conversation stay on the same side.

    Whole prompt groups, in a seeded random order, go to the holdout until it holds at least
    `round(holdout_fraction * len(rows))` pairs. Each side keeps the input order.
    """
    if not 0 <= holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    keys = [prompt_key(row["prompt"]) for row in rows]
    groups = sorted(set(keys))  # sorted first so the shuffle depends on the seed only, not on set order
    random.Random(seed).shuffle(groups)
    target = round(holdout_fraction * len(rows))
    sizes = {key: keys.count(key) for key in groups}
    holdout_keys: set[str] = set()
    held = 0
    for key in groups:
        if held >= target:
            break
        holdout_keys.add(key)
        held += sizes[key]
    train = [row for row, key in zip(rows, keys, strict=True) if key not in holdout_keys]
    holdout = [row for row, key in zip(rows, keys, strict=True) if key in holdout_keys]
    return train, holdout


def prompt_key(prompt: list[Message]) -> str:
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def write_pairs(rows: Sequence[PreferenceRow], path: Path | str) -> None:
    with Path(path).open("w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def hh_rlhf_to_trl(row: Any) -> PreferenceRow:
    """Convert an Anthropic HH-RLHF row (two whole transcripts) to a conversational TRL pair.

    The prompt is every turn the two transcripts share; chosen and rejected are their last assistant turns.
    Raises ValueError with the reason for rows that carry no usable preference.
    """
    if not isinstance(row, dict) or not isinstance(row.get("chosen"), str) or not isinstance(row.get("rejected"), str):
        raise ValueError('an HH-RLHF row must be an object with string "chosen" and "rejected" transcripts')
    if row["chosen"] == row["rejected"]:
        raise ValueError("chosen and rejected transcripts are identical")
    chosen = _parse_hh_transcript(row["chosen"], "chosen")
    rejected = _parse_hh_transcript(row["rejected"], "rejected")
    if chosen[:-1] != rejected[:-1]:
        raise ValueError("the transcripts differ before their last assistant turn, so they share no prompt")
    return parse_pair({"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]})


def _parse_hh_transcript(text: str, name: str) -> list[Message]:
    # re.split with a capture group gives [before, role, text, role, text, ...]
    pieces = _HH_TURN.split(text)
    if pieces[0].strip() or len(pieces) < 5:
        raise ValueError(f'the {name} transcript is not "\\n\\nHuman: ...\\n\\nAssistant: ..." turns')
    messages = [
        {"role": _HH_ROLES[role], "content": content.strip()}
        for role, content in zip(pieces[1::2], pieces[2::2], strict=True)
    ]
    if messages[-1]["role"] != "assistant" or messages[-2]["role"] != "user":
        raise ValueError(f"the {name} transcript must end with a human turn followed by an assistant turn")
    return messages


def load_hh_rlhf(path: Path | str) -> tuple[list[PreferenceRow], list[str]]:
    """Convert an HH-RLHF JSON Lines file: the usable pairs, and one `line N: reason` for each row left out."""
    pairs: list[PreferenceRow] = []
    skipped: list[str] = []
    with Path(path).open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                pairs.append(hh_rlhf_to_trl(json.loads(line)))
            except ValueError as error:  # JSONDecodeError is a ValueError too
                skipped.append(f"line {line_number}: {error}")
    return pairs, skipped
