from __future__ import annotations

import math
import subprocess
import sys

import pytest

from tests.training.samples import REPO
from training.gate import gate_decision


@pytest.mark.parametrize(
    ("accuracy", "parent", "promote", "reason"),
    [
        (0.55, None, False, "held-out accuracy 0.550 is below the threshold 0.600"),
        (0.65, None, True, "no parent to compare with"),
        (0.60, None, True, "meets the threshold 0.600"),
        (0.66, 0.68, True, "within 0.030 of the parent's 0.680"),
        (0.65, 0.68, True, "within 0.030 of the parent's 0.680"),
        (0.64, 0.68, False, "more than 0.030 below the parent's 0.680"),
        (0.59, 0.50, False, "below the threshold"),
        (0.70, 0.62, True, "meets the threshold"),
    ],
)
def test_gate_decision(accuracy: float, parent: float | None, promote: bool, reason: str) -> None:
    decision = gate_decision(accuracy, parent, threshold=0.6, tolerance=0.03)

    assert decision.promote is promote
    assert reason in decision.reason


@pytest.mark.parametrize(
    ("accuracy", "parent", "tolerance"),
    [(1.2, None, 0.0), (math.nan, None, 0.0), (0.5, -0.1, 0.0), (0.5, 0.5, -1), (0.5, 0.5, math.nan)],
)
def test_gate_decision_rejects_impossible_inputs(accuracy: float, parent: float | None, tolerance: float) -> None:
    with pytest.raises(ValueError):
        gate_decision(accuracy, parent, threshold=0.6, tolerance=tolerance)


def test_the_gate_imports_no_torch() -> None:
    # The Celery trainer imports the gate; torch, transformers and TRL would cost it seconds and hundreds of MB.
    code = "import sys, training.gate; print(sorted({'torch', 'transformers', 'trl', 'peft'} & set(sys.modules)))"

    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)

    assert loaded.stdout.strip() == "[]"
