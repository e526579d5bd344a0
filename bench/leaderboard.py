"""Benchmark: the leaderboard's bootstrap, all resamples in one stacked fit against one fit per resample.

    .venv/bin/python -m bench.leaderboard                          # 6 versions, 2,000 votes, 200 resamples
    .venv/bin/python -m bench.leaderboard --votes 10000 --length-control

leaderboard.ratings fits every bootstrap resample at once, as one logistic regression with a block-diagonal design
(the blocks' losses and penalties separate, so each block's optimum is that resample's own fit). The baseline is the
obvious loop: one scikit-learn fit per resample, on the same rows and weights. Both run here, on the same simulated
votes; prints the seconds of each, their ratio, the largest difference between their coefficients, and the
machine's load average (the machine is shared: compare ratios, not seconds).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from sklearn.linear_model import LogisticRegression

from annotate.leaderboard.ratings import DEFAULT_PRIOR_VARIANCE, Vote, _design, _fit_many


def simulated_votes(versions: int, count: int, rng: np.random.Generator) -> list[Vote]:
    strengths = rng.normal(0, 0.7, versions)
    votes = []
    for _ in range(count):
        first, second = rng.choice(versions, 2, replace=False)
        length_a, length_b = (int(200 * rng.lognormal(0, 0.4)) for _ in range(2))
        logit = strengths[first] - strengths[second] + (length_a - length_b) / (length_a + length_b)
        outcome = "tie" if rng.random() < 0.1 else "a" if rng.random() < 1 / (1 + np.exp(-logit)) else "b"
        votes.append(Vote(f"v{first}", f"v{second}", outcome, length_a, length_b))
    return votes


def one_fit_per_resample(design, weights: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    coefficients = []
    for column in range(weights.shape[1]):
        row_weights = design.weight_per_vote @ weights[:, column]
        keep = row_weights > 0
        # newton-cholesky: the fastest solver for one small fit (few columns) that we measured
        model = LogisticRegression(C=DEFAULT_PRIOR_VARIANCE, fit_intercept=False, solver="newton-cholesky", tol=1e-10)
        model.fit(design.features[keep], design.labels[keep], sample_weight=row_weights[keep])
        coefficients.append(model.coef_[0])
    return np.array(coefficients)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--versions", type=int, default=6)
    parser.add_argument("--votes", type=int, default=2000)
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--length-control", action="store_true")
    arguments = parser.parse_args()

    rng = np.random.default_rng(0)
    votes = simulated_votes(arguments.versions, arguments.votes, rng)
    index = {f"v{number}": number for number in range(arguments.versions)}
    design = _design(votes, index, length_control=arguments.length_control)
    count = len(votes)
    resamples = [np.bincount(rng.integers(0, count, count), minlength=count) for _ in range(arguments.resamples)]
    weights = np.stack(resamples, axis=1).astype(float)

    started = time.perf_counter()
    stacked = _fit_many(design, weights, DEFAULT_PRIOR_VARIANCE)
    stacked_seconds = time.perf_counter() - started
    started = time.perf_counter()
    looped = one_fit_per_resample(design, weights)
    looped_seconds = time.perf_counter() - started

    length = "on" if arguments.length_control else "off"
    print(f"{arguments.versions} versions, {arguments.votes} votes, {arguments.resamples} resamples")
    print(f"length control {length}; {design.features.shape[0]} distinct rows")
    print(f"stacked fit:           {stacked_seconds:7.2f} s")
    print(f"one fit per resample:  {looped_seconds:7.2f} s")
    print(f"ratio (loop / stacked): {looped_seconds / stacked_seconds:.1f}x")
    print(f"largest coefficient difference: {np.abs(stacked - looped).max():.2e}")
    print("load average (1, 5, 15 min): " + ", ".join(f"{load:.2f}" for load in os.getloadavg()))


if __name__ == "__main__":
    main()
