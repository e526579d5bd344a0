"""What training rounds and exports do with the AI judge's votes (Judgement.Source.JUDGE): one rule, three values.

out: left out (the default: a judge is trusted only as far as people checked it); weight: each judge vote counts with
a weight staff set, below a person's 1 (PairWeights multiplies it in); in: counted like a person's vote.

Pure (no Django): the settings, PreferenceRules, the export form and serializer all read this one spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

JudgeRule = Literal["out", "weight", "in"]
JUDGE_RULES: tuple[JudgeRule, ...] = ("out", "weight", "in")
JUDGE_RULE_LABELS = {
    "out": "left out",
    "weight": "weighted (each judge vote counts with the weight below)",
    "in": "included like people's votes",
}
# A judge vote never weighs more than a person's (1) nor nothing (0 is the rule "out").
JUDGE_WEIGHT_MIN = 0.0  # exclusive
JUDGE_WEIGHT_MAX = 1.0
JUDGE_WEIGHT_DEFAULT = 0.5
JUDGE_WEIGHT_HELP = (
    f"With the rule weight: each judge vote's weight, above {JUDGE_WEIGHT_MIN:g} and at most {JUDGE_WEIGHT_MAX:g}."
)


def judge_rule_errors(rule: str, weight: float) -> dict[str, str]:
    """What is wrong with a judge rule and weight, by field (judge, judge_weight); empty when they can be used."""
    errors = {}
    if rule not in JUDGE_RULES:
        errors["judge"] = f"must be one of {', '.join(JUDGE_RULES)}, not {rule!r}"
    if not JUDGE_WEIGHT_MIN < weight <= JUDGE_WEIGHT_MAX:
        errors["judge_weight"] = f"must be above {JUDGE_WEIGHT_MIN:g} and at most {JUDGE_WEIGHT_MAX:g}, not {weight:g}"
    return errors


def judge_rule_stored(data: Mapping[str, Any]) -> tuple[str, float]:
    """The rule and weight of stored rules (a round's, an export's filters). Rules stored before the weight existed
    say `include_judge` (true or false): read as in or out."""
    if "judge" in data:
        return str(data["judge"]), float(data.get("judge_weight", JUDGE_WEIGHT_DEFAULT))
    return ("in" if data.get("include_judge") else "out"), JUDGE_WEIGHT_DEFAULT


def judge_rule_described(rule: str, weight: float) -> str:
    """For a dataset card or a round page: "left out", "included like people's votes" or "weighted 0.5"."""
    return f"weighted {weight:g} (a person's vote: 1)" if rule == "weight" else JUDGE_RULE_LABELS.get(rule, rule)
