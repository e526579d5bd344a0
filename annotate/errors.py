"""The two kinds of error a user's request can meet. Services raise them (or a subclass that says more); views and
the API turn them into answers (400 with the fields named, 409 with the reason: annotate.web.api_errors.error_response
for the API), so no service knows about HTTP and no view re-checks a rule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Invalid(Exception):
    """The request is wrong: `errors` names each bad field (or the file) and why, a message or a list of them.
    Nothing was changed."""

    code = "invalid"

    def __init__(self, errors: Mapping[str, str | list[str]]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))
        self.errors: dict[str, str | list[str]] = dict(errors)


class Conflict(Exception):
    """The request is fine but the current state does not allow it (a transition a state machine refuses, a lease
    that is not yours, a round already running). The message says why; `context` holds what else the answer carries
    (the id of what stands in the way). Nothing was changed."""

    code = "conflict"

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.context = context
