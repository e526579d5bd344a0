"""Preference pairs in TRL's conversational format, one JSON object a line, e.g.

{"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
 "rejected": [{"role": "assistant", "content": "Go away."}]}

The prompt is the conversation so far (system, user and assistant turns, ending with a user turn); chosen and
rejected are the assistant's two answers, the first preferred by a human. A row may also carry a "weight" (a number
>= 0, how much the pair counts in training; see training.dpo.WeightedDPOTrainer); then every row of the file must.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from training.jsonl import write_jsonl

Message = dict[str, str]


class PreferenceRow(TypedDict):
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    weight: NotRequired[float]


MAX_ERRORS_SHOWN = 20


def load_pairs(path: Path | str) -> list[PreferenceRow]:
    """Read and validate a JSON Lines file of preference pairs.

    Blank lines are skipped; keys other than prompt/chosen/rejected/weight (ids, metadata) are dropped. Raises
    ValueError listing every bad line (`path:line: reason`) when any line is invalid, so nothing trains on half a file;
    also when only some rows carry a weight, or every weight is 0.
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
    weighted = sum("weight" in row for row in rows)
    if weighted not in (0, len(rows)):
        raise ValueError(f"{path}: {weighted} of {len(rows)} pairs carry a weight; either every pair does or none")
    if weighted and not any(row["weight"] > 0 for row in rows):
        raise ValueError(f"{path}: every pair's weight is 0, so nothing would be learned")
    return rows


def weights_to_mean_one(weights: Sequence[float]) -> list[float]:
    """Weights scaled to average 1: a weighted round then moves the adapter as far as an unweighted one at the same
    learning rate, whatever scale the weights came in. Raises ValueError when they are all 0 (nothing would count)."""
    total = sum(weights)
    if total <= 0:
        raise ValueError("every pair's weight is 0, so nothing would be learned")
    return [weight * len(weights) / total for weight in weights]


def parse_pair(value: Any) -> PreferenceRow:
    """Validate one decoded row and return it with only the prompt/chosen/rejected (and weight) keys, messages
    OpenAI-style.

    Messages may be OpenAI- or ShareGPT-style (see `messages_from`); answers may be empty strings.
    """
    if not isinstance(value, dict):
        raise ValueError(f"a pair must be a JSON object, got {type(value).__name__}")
    missing = [key for key in ("prompt", "chosen", "rejected") if key not in value]
    if missing:
        raise ValueError(f"missing key(s) {missing}")
    prompt = messages_from(value["prompt"], "prompt", allow_empty_content=True)
    if prompt[-1]["role"] != "user":
        raise ValueError("the prompt must end with a user message")
    chosen = messages_from(value["chosen"], "chosen", roles=("assistant",), allow_empty_content=True)
    rejected = messages_from(value["rejected"], "rejected", roles=("assistant",), allow_empty_content=True)
    if chosen == rejected:
        raise ValueError("chosen and rejected are identical: the pair carries no preference")
    row: PreferenceRow = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if "weight" in value:
        weight = value["weight"]
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        row["weight"] = float(weight)
    return row


# OpenAI roles as they are; ShareGPT's "from" values mapped to them.
ROLE_NAMES = {"system": "system", "user": "user", "assistant": "assistant", "human": "user", "gpt": "assistant"}
ALL_ROLES = ("system", "user", "assistant")


def messages_from(
    value: Any, where: str, *, roles: Sequence[str] = ALL_ROLES, allow_empty_content: bool = False
) -> list[Message]:
    """The one message validator: a non-empty list of chat messages, returned as OpenAI-style {role, content} dicts.

    Each message is either OpenAI-style `{"role": ..., "content": "..."}` or ShareGPT-style
    `{"from": "human" | "gpt" | "system", "value": "..."}`; other keys (e.g. "name") are dropped. `roles` limits the
    (OpenAI) roles allowed; content must be a string, and a non-blank one unless `allow_empty_content` (a preference
    pair may prefer an empty answer). Raises ValueError naming the place, e.g. `chosen[0].role must be one of ...`,
    with `where` as the prefix.
    """
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where} must be a non-empty list of messages")
    messages = []
    for index, message in enumerate(value):
        here = f"{where}[{index}]"
        if not isinstance(message, dict):
            raise ValueError(f"{here} must be an object")
        role_key, content_key = ("role", "content") if "role" in message else ("from", "value")
        if role_key not in message or content_key not in message:
            raise ValueError(f'{here} needs "role" and "content" (or ShareGPT\'s "from" and "value")')
        name = message[role_key]
        role = ROLE_NAMES.get(name) if isinstance(name, str) else None
        if role is None or role not in roles:
            allowed = sorted(key for key, mapped in ROLE_NAMES.items() if mapped in roles)
            raise ValueError(f"{here}.{role_key} must be one of {allowed}, got {name!r}")
        content = message[content_key]
        if not isinstance(content, str):
            raise ValueError(f"{here}.{content_key} must be a string")
        if not allow_empty_content and not content.strip():
            raise ValueError(f"{here}.{content_key} must not be blank")
        messages.append({"role": role, "content": content})
    return messages


def write_pairs(rows: Sequence[PreferenceRow], path: Path | str) -> None:
    write_jsonl(path, rows)


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
