"""Canary power: how often the canary's rule serves a candidate of a given true win rate, and how many votes it takes.

    .venv/bin/python -m bench.canary_power [--canaries 4000] [--repeats 5] [--tie-share 0.2] [--seed 1] [--json FILE]

The rule measured is the one the app runs at its settings (annotate.rounds.canary.canary_test, so CANARY_* variables
in the environment change it too): Wald's sequential test, deciding from CANARY_MIN_VOTES on, truncated at
CANARY_MAX_VOTES. The baseline, in the same run, is the rule it replaced: after 30 votes, serve if the lower end of the
win rate's Wilson 95 % interval reaches 0.5.

For each true win rate (0.4 to 0.7, ties counting half) it draws --canaries canaries of votes (numpy, seeded): each
vote a win, a tie (--tie-share of votes: ties and both-bad) or a loss, so that wins plus half the ties make the win
rate. Both rules read the same votes. Repeats are interleaved (every rate once per repeat, each with its own seed);
the table gives the median over repeats and the spread (min-max) of the share served, and the mean, median and 90th
percentile of the votes the new rule took, pooled over repeats. Beside them, the exact chance to serve and expected
votes of the new rule (WinRateTest.outlook, no simulation): the simulation and the exact figures check each other.

It also says what the new rule makes of the tallies that motivated it (issue 21): 22 wins and 18 losses on a live
instance, and the three canaries of the loop benchmark (docs/benchmarks.md, "The loop").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "annotate.settings")

import django

django.setup()

from annotate.rounds.canary import Tally, canary_outlook, canary_rule, canary_test  # noqa: E402
from training.stats import WinRateTest, wilson_interval  # noqa: E402

WIN_RATES = (0.4, 0.45, 0.5, 0.55, 0.6, 0.7)
OLD_VOTES, OLD_MIN_LOW = 30, 0.5
# Tallies (wins, ties, losses) the old rule rejected: the live instance of issue 21, the loop benchmark's rounds 1-3.
MOTIVATING = {
    "live instance": (22, 0, 18),
    "loop round 1": (17, 1, 14),
    "loop round 2": (16, 0, 16),
    "loop round 3": (21, 0, 11),
}


def votes_draw(rng: np.random.Generator, *, win_rate: float, tie_share: float, canaries: int, votes: int) -> Any:
    """Scores of each vote (1 a win, 0.5 a tie, 0 a loss), shape (canaries, votes)."""
    win_share = win_rate - tie_share / 2
    loss_share = 1 - win_share - tie_share
    if min(win_share, loss_share) < 0:
        raise SystemExit(f"a tie share of {tie_share} cannot make a win rate of {win_rate}")
    return rng.choice(np.array([1.0, 0.5, 0.0]), p=[win_share, tie_share, loss_share], size=(canaries, votes))


def sequential_run(test: WinRateTest, scores: Any) -> tuple[Any, Any]:
    """(served, votes taken) for each canary under the sequential test, read after every vote."""
    votes = np.arange(1, scores.shape[1] + 1)
    score = np.cumsum(scores, axis=1)
    evidence = score * test.win_step + (votes - score) * test.loss_step
    crossed = (evidence >= test.upper) | (evidence <= test.lower)
    crossed[:, : test.min_votes - 1] = False
    decided = crossed.any(axis=1)
    first = np.where(decided, crossed.argmax(axis=1), scores.shape[1] - 1)
    final = evidence[np.arange(len(first)), first]
    served = np.where(decided, final >= test.upper, final > 0)  # undecided at the end: where the evidence leans
    return served, first + 1


def old_run(scores: Any) -> Any:
    """Served or not for each canary under the replaced rule: 30 votes, Wilson lower bound at least 0.5."""
    score = scores[:, :OLD_VOTES].sum(axis=1)
    lower = {value: wilson_interval(value, OLD_VOTES)[0] for value in np.unique(score)}
    return np.array([lower[value] >= OLD_MIN_LOW for value in score])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--canaries", type=int, default=4000, help="simulated canaries per win rate and repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tie-share", type=float, default=0.2, help="share of votes that are ties or both-bad")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results here")
    arguments = parser.parse_args()

    test = canary_test()
    print(
        f"rule: Wald SPRT, H0 win rate <= {test.null_win_rate:.3f}, H1 >= {test.target_win_rate:.3f}, "
        f"alpha {test.alpha}, beta {test.beta}, decides from {test.min_votes} votes, at most {test.max_votes} "
        f"(then serves if the win rate is above {test.midpoint:.3f}); bounds on the log-likelihood ratio "
        f"{test.lower:.3f} and {test.upper:.3f}, a win +{test.win_step:.4f}, a loss {test.loss_step:.4f}"
    )
    print(f"baseline: after {OLD_VOTES} votes, serve if the Wilson 95 % lower bound reaches {OLD_MIN_LOW}")
    print(
        f"tie share {arguments.tie_share}, {arguments.canaries} canaries x {arguments.repeats} repeats, "
        f"seed {arguments.seed}"
    )

    started = time.monotonic()
    served: dict[float, list[float]] = {rate: [] for rate in WIN_RATES}
    old_served: dict[float, list[float]] = {rate: [] for rate in WIN_RATES}
    votes_taken: dict[float, list[Any]] = {rate: [] for rate in WIN_RATES}
    for repeat in range(arguments.repeats):
        for index, rate in enumerate(WIN_RATES):
            rng = np.random.default_rng([arguments.seed, repeat, index])
            scores = votes_draw(
                rng, win_rate=rate, tie_share=arguments.tie_share, canaries=arguments.canaries, votes=test.max_votes
            )
            new, votes = sequential_run(test, scores)
            served[rate].append(float(new.mean()))
            votes_taken[rate].append(votes)
            old_served[rate].append(float(old_run(scores).mean()))

    rows = []
    print(
        "\n| true win rate | served: new rule (exact) | served: old rule | votes: new mean / median / p90 (exact mean) "
        "| votes: old |"
    )
    print("| ---: | --- | --- | --- | ---: |")
    for rate in WIN_RATES:
        exact_served, exact_votes = test.outlook(
            win_share=rate - arguments.tie_share / 2, tie_share=arguments.tie_share
        )
        pooled = np.concatenate(votes_taken[rate])
        row = {
            "win_rate": rate,
            "served": statistics.median(served[rate]),
            "served_spread": [min(served[rate]), max(served[rate])],
            "served_exact": exact_served,
            "old_served": statistics.median(old_served[rate]),
            "old_served_spread": [min(old_served[rate]), max(old_served[rate])],
            "votes_mean": float(pooled.mean()),
            "votes_median": float(np.median(pooled)),
            "votes_p90": float(np.percentile(pooled, 90)),
            "votes_exact_mean": exact_votes,
        }
        rows.append(row)
        print(
            f"| {rate:.2f} | {row['served']:.3f} [{row['served_spread'][0]:.3f}-{row['served_spread'][1]:.3f}] "
            f"({exact_served:.3f}) | {row['old_served']:.3f} [{row['old_served_spread'][0]:.3f}-"
            f"{row['old_served_spread'][1]:.3f}] | {row['votes_mean']:.1f} / {row['votes_median']:.0f} / "
            f"{row['votes_p90']:.0f} ({exact_votes:.1f}) | {OLD_VOTES} |"
        )

    print("\nThe tallies the old rule rejected, under the new rule:")
    examples = {}
    for name, (wins, ties, losses) in MOTIVATING.items():
        tally = Tally(wins, ties, losses)
        decision = canary_rule(tally, waited=timedelta(0))
        chance, more = canary_outlook(tally)
        rate = tally.win_rate or 0.0
        examples[name] = {
            "tally": [wins, ties, losses],
            "evidence": round(test.log_likelihood_ratio(tally.score, tally.votes), 9) + 0.0,  # no "-0.00"
            "decision": decision,
            "votes_expected": more,
            "served_if_votes_split_alike": chance,
        }
        print(
            f"- {name}: {wins} wins, {ties} ties, {losses} losses (win rate {rate:.3f}): evidence "
            f"{examples[name]['evidence']:.2f} in ({test.lower:.2f}, {test.upper:.2f}): "
            f"{decision[0] + ': ' + decision[1] if decision else 'keep collecting'}; about {more:.0f} more votes "
            f"expected; served with chance {chance:.2f} if later votes split like these (the round page's figures)"
        )
    seconds = time.monotonic() - started
    print(f"\n{seconds:.1f} s, load average {' '.join(f'{value:.2f}' for value in os.getloadavg())}")
    if arguments.json:
        arguments.json.write_text(
            json.dumps(
                {"arguments": {k: str(v) for k, v in vars(arguments).items()}, "rows": rows, "examples": examples},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
