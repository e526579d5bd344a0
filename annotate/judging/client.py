"""Asking a judge about one pair: the prompt (from its template), one request per order of the sides through the
app's outbound rules (annotate.hooks.transport), and reading a choice and a confidence out of whatever comes back."""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from annotate.hooks.transport import outbound_post

TEMPLATE_FIELDS = frozenset({"prompt", "first", "second"})
REPLY_KEPT_CHARACTERS = 4000
_OBJECT = re.compile(r"\{[^{}]*\}", re.DOTALL)
_BARE = re.compile(r"^\W*(?:answer\s*)?(1|2|tie)\b", re.IGNORECASE)
_CHOICES = {"1": "1", "2": "2", "tie": "tie", "answer 1": "1", "answer 2": "2"}


def template_problem(template: str) -> str | None:
    """Why `template` cannot make a judge's prompt, or None: it must name {prompt}, {first} and {second} and nothing
    else ({{ and }} stand for braces)."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        return f"not a valid template: {error} (write {{{{ and }}}} for braces)"
    unknown = sorted(names - TEMPLATE_FIELDS)
    if unknown:
        return f"unknown fields: {', '.join(unknown)[:100]} (use {{prompt}}, {{first}}, {{second}})"
    missing = sorted(TEMPLATE_FIELDS - names)
    if missing:
        return f"missing fields: {', '.join(missing)}"
    return None


def judge_prompt(template: str, *, messages: list[dict[str, Any]], first: str, second: str) -> str:
    conversation = "\n".join(f"{message['role']}: {message['content']}" for message in messages)
    return template.format(prompt=conversation, first=first, second=second)


@dataclass(frozen=True)
class Reply:
    """One answer: its choice ("1", "2" or "tie") and confidence (0-1, None when it gave none), or an error."""

    choice: str
    confidence: float | None
    raw: str
    error: str = ""


def reply_read(content: str) -> tuple[str, float | None] | None:
    """The choice and confidence in a model's text: a JSON object {"choice": ..., "confidence": ...} anywhere in it,
    else a bare leading 1, 2 or tie (no confidence); None when neither is there."""
    for match in _OBJECT.finditer(content):
        try:
            found = json.loads(match.group())
        except ValueError:
            continue
        if not isinstance(found, dict):
            continue
        choice = _CHOICES.get(str(found.get("choice", "")).strip().lower())
        if choice is None:
            continue
        return choice, _confidence(found.get("confidence"))
    bare = _BARE.match(content)
    if bare:
        return bare.group(1).lower(), None
    return None


def _confidence(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    if 1 < number <= 100:
        number /= 100  # a percentage
    return number if 0 <= number <= 1 else None


def judge_ask(*, url: str, api_key: str, model: str, allow_private: bool, content: str) -> Reply:
    """One chat completion from the judge's endpoint. Never raises for what the endpoint does: a refused address,
    a timeout, an error status, a reply too large or one without a readable choice is a Reply with its error."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": settings.JUDGE_MAX_TOKENS,
    }
    answer = outbound_post(
        url=url.rstrip("/") + "/chat/completions",
        body=json.dumps(body).encode(),
        headers=headers,
        allow_private=allow_private,
        max_bytes=settings.JUDGE_REPLY_MAX_BYTES,
        connect_seconds=settings.JUDGE_CONNECT_TIMEOUT,
        read_seconds=settings.JUDGE_READ_TIMEOUT,
        total_seconds=settings.JUDGE_TOTAL_SECONDS,
    )
    raw = _kept(answer.excerpt)
    if answer.error:
        return Reply("", None, raw, answer.error)
    if answer.truncated:
        return Reply("", None, raw, f"reply larger than {settings.JUDGE_REPLY_MAX_BYTES} bytes (or too slow); unread")
    try:
        message = json.loads(answer.excerpt)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return Reply("", None, raw, "not an OpenAI chat completion (no choices[0].message.content)")
    if not isinstance(message, str):
        return Reply("", None, raw, "the completion's content is not text")
    read = reply_read(message)
    if read is None:
        return Reply("", None, _kept(message), "no choice in the reply (expected 1, 2 or tie)")
    return Reply(read[0], read[1], _kept(message))


def _kept(text: str) -> str:
    """What is stored of a reply: its start, without the NUL characters a database text column refuses."""
    return text[:REPLY_KEPT_CHARACTERS].replace("\x00", "\ufffd")


def both_orders(first: Reply, second: Reply) -> tuple[str, float | None, bool, str, str]:
    """The verdict of a reply with A shown first and one with B shown first, in the pair's labels: (choice,
    confidence, consistent, first's choice, second's choice). A judge that changes its mind with the order is unsure,
    with confidence 0; otherwise its confidence is the lower of the two (None when either gave none)."""
    as_pair_first = {"1": "a", "2": "b", "tie": "tie"}[first.choice]
    as_pair_second = {"1": "b", "2": "a", "tie": "tie"}[second.choice]
    if as_pair_first != as_pair_second:
        return "unsure", 0.0, False, as_pair_first, as_pair_second
    confidences = [first.confidence, second.confidence]
    confidence = None if None in confidences else min(c for c in confidences if c is not None)
    return as_pair_first, confidence, True, as_pair_first, as_pair_second
