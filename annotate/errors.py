"""The two kinds of error a user's request can meet. Services raise them; views and the API turn them into answers
(400 with the fields named, 409 with the reason), so no service knows about HTTP and no view re-checks a rule."""

from __future__ import annotations


class Invalid(Exception):
    """The request is wrong: `errors` names each bad field (or line) and why. Nothing was changed."""

    code = "invalid"

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors.items()))
        self.errors = errors


class Conflict(Exception):
    """The request is fine but the current state does not allow it (a transition a state machine refuses, a lease
    that is not yours, a round already running). The message says why. Nothing was changed."""

    code = "conflict"
