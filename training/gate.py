"""The promotion gate of a round: a pure rule on held-out accuracies, importable without torch (the web uses it)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str


def gate_decision(accuracy: float, parent_accuracy: float | None, threshold: float, tolerance: float) -> GateDecision:
    """Promote only when accuracy >= threshold and it is no more than `tolerance` below the parent's accuracy."""
    for name, value in (("accuracy", accuracy), ("parent_accuracy", parent_accuracy), ("threshold", threshold)):
        if value is not None and not 0 <= value <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if math.isnan(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if accuracy < threshold:
        return GateDecision(False, f"held-out accuracy {accuracy:.3f} is below the threshold {threshold:.3f}")
    if parent_accuracy is not None and accuracy < parent_accuracy - tolerance:
        return GateDecision(
            False,
            f"held-out accuracy {accuracy:.3f} is more than {tolerance:.3f} below the parent's {parent_accuracy:.3f}",
        )
    against_parent = (
        "no parent to compare with"
        if parent_accuracy is None
        else f"within {tolerance:.3f} of the parent's {parent_accuracy:.3f} or better"
    )
    return GateDecision(True, f"held-out accuracy {accuracy:.3f} meets the threshold {threshold:.3f}; {against_parent}")
