"""What the annotate page shows of multi-turn work (annotate.turns), added to its context by annotation.views."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import User

from annotate.turns import services


def turns_context(annotator: User) -> dict[str, Any]:
    """The conversation the page waits for, or else the offer to continue the last vote's conversation."""
    waiting = services.continuation_waiting(annotator=annotator)
    return {
        "continuation_waiting": waiting,
        "continuation_offer": None if waiting else services.continuation_offer(annotator=annotator),
        "continuation_max": settings.CONTINUATION_MESSAGE_MAX_CHARACTERS,
    }
