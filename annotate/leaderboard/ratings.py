"""Bradley-Terry ratings of model versions from head-to-head votes: pure statistics, no Django.

The model: the probability that version i's answer beats version j's is sigmoid(theta_i - theta_j). It is fitted as
a logistic regression without intercept (scikit-learn), one column per version (+1 for the pair's answer A, -1 for
answer B), as Chatbot Arena does. The rules, stated once:

- A tie counts as half a win for each side (two rows, y=1 and y=0, each of weight 1/2): the tie's likelihood is
  sqrt(p * (1 - p)), Chatbot Arena's convention; no separate tie parameter.
- A both-bad vote counts as a tie: neither answer was preferred.
- Each version's strength has a weak Gaussian prior (mean 0, variance `prior_variance` in logits squared, an L2
  penalty): without it a version that won every one of its few votes would get an infinite rating.
- Ratings are on the Elo-like scale: 400 / ln(10) points per logit, the reference version (`anchor`) fixed at 1000.
  A version's interval is therefore the interval of its difference to the reference (the reference's own is
  [1000, 1000]).
- 95 % intervals: percentile bootstrap over votes (resampled with replacement, seeded, `bootstrap_rounds` times).
  With few votes, or one side winning every vote, every resample looks alike and the interval is too narrow:
  read intervals of versions with few votes with care. On simulated votes with known strengths (4 versions, 300
  votes, 200 simulations) the intervals held the true difference 92 % (100 resamples) to 93 % (200) of the time:
  slightly narrow, as percentile bootstrap intervals are at this size.
- Rank: 1 + the number of versions whose lower bound lies above this version's upper bound, so versions whose
  intervals overlap share a rank.
- Length control (optional, as Chatbot Arena's style control): one more column, the answers' relative length
  difference (len_a - len_b) / (len_a + len_b), in [-1, 1]. Its coefficient says how much being longer wins by
  itself; the version columns of the same fit are the length-controlled ratings.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy.sparse import coo_array, csr_array, identity, kron
from scipy.sparse.csgraph import connected_components
from sklearn.linear_model import LogisticRegression

Outcome = Literal["a", "b", "tie", "both_bad"]
OUTCOMES: tuple[Outcome, ...] = ("a", "b", "tie", "both_bad")

POINTS_PER_LOGIT = 400 / math.log(10)
ANCHOR_RATING = 1000.0
DEFAULT_PRIOR_VARIANCE = 4.0  # logits squared: a standard deviation of about 350 rating points
# "An answer twice as long as the other": a relative length difference of (2 - 1) / (2 + 1).
TWICE_AS_LONG = 1 / 3


@dataclass(frozen=True)
class Vote:
    """One head-to-head vote: the versions behind the pair's answers A and B, the choice, the answers' lengths."""

    version_a: str
    version_b: str
    outcome: Outcome
    length_a: int = 0
    length_b: int = 0

    @property
    def relative_length_difference(self) -> float:
        total = self.length_a + self.length_b
        return (self.length_a - self.length_b) / total if total else 0.0


@dataclass(frozen=True)
class Record:
    """Votes between two sides, as seen from `version`: both-bad votes are counted among the ties too."""

    votes: int = 0
    wins: int = 0
    ties: int = 0
    losses: int = 0
    both_bad: int = 0

    @property
    def win_rate(self) -> float | None:
        """Wins plus half the ties, over the votes; None without votes."""
        return (self.wins + self.ties / 2) / self.votes if self.votes else None

    def add(self, outcome: Outcome, *, as_a: bool) -> Record:
        won = (outcome == "a") == as_a and outcome in ("a", "b")
        lost = outcome in ("a", "b") and not won
        return Record(
            votes=self.votes + 1,
            wins=self.wins + won,
            ties=self.ties + (outcome in ("tie", "both_bad")),
            losses=self.losses + lost,
            both_bad=self.both_bad + (outcome == "both_bad"),
        )


@dataclass(frozen=True)
class Rating:
    version: str
    rating: float
    lower: float
    upper: float
    rank: int


@dataclass(frozen=True)
class LengthEffect:
    """The length column's coefficient (logits per unit of relative length difference) with its interval."""

    coefficient: float
    lower: float
    upper: float

    @property
    def points_twice_as_long(self) -> float:
        """Rating points an answer gains by being twice as long as the other, other things equal."""
        return self.coefficient * TWICE_AS_LONG * POINTS_PER_LOGIT


@dataclass(frozen=True)
class Leaderboard:
    anchor: str
    ratings: list[Rating]  # best first
    records: dict[str, Record]  # each version against all others
    matrix: dict[tuple[str, str], Record]  # (version, opponent): version's record against that opponent
    unconnected: list[str]  # versions with votes but no chain of votes to the anchor: not rated
    bootstrap_rounds: int
    votes: int
    length_effect: LengthEffect | None = None
    length_controlled: list[Rating] | None = None


@dataclass(frozen=True)
class _Design:
    """The logistic regression's distinct rows, and how much weight each vote puts on each of them."""

    features: NDArray[np.float64]  # (rows, versions [+ 1 length column])
    labels: NDArray[np.int64]  # (rows,) 1: the row's "A" side won
    weight_per_vote: csr_array  # (rows, votes)


# Weight of the rows (x, 1) and (x, 0) for each outcome: a tie is half a win and half a loss; both-bad is a tie.
_OUTCOME_WEIGHTS = {"a": (1.0, 0.0), "b": (0.0, 1.0), "tie": (0.5, 0.5), "both_bad": (0.5, 0.5)}


def _design(votes: list[Vote], index: dict[str, int], *, length_control: bool) -> _Design:
    """Each vote gives the rows (x, 1) and (x, 0) weighted by its outcome, and their mirrors (-x, 0) and (-x, 1)
    with the same weights, all halved: the model has no intercept, so the mirrors leave the objective unchanged
    and make sure both classes are present (scikit-learn needs two). Identical rows are merged, so a fit costs
    the same for ten votes or ten thousand (without length control)."""
    count = len(votes)
    base = np.zeros((count, len(index) + (1 if length_control else 0)))
    rows = np.arange(count)
    base[rows, [index[vote.version_a] for vote in votes]] = 1.0
    base[rows, [index[vote.version_b] for vote in votes]] = -1.0  # never the same column: no self-votes
    if length_control:
        base[:, -1] = [vote.relative_length_difference for vote in votes]
    win, loss = (np.array([_OUTCOME_WEIGHTS[vote.outcome][side] for vote in votes]) / 2 for side in (0, 1))
    features = np.concatenate([base, base, -base, -base])
    labels = np.repeat([1, 0, 0, 1], count)
    weights = np.concatenate([win, loss, win, loss])
    distinct, row_of = np.unique(np.column_stack([features, labels]), axis=0, return_inverse=True)
    weight_per_vote = csr_array((weights, (row_of.ravel(), np.tile(rows, 4))), shape=(len(distinct), count))
    return _Design(features=distinct[:, :-1], labels=distinct[:, -1].astype(np.int64), weight_per_vote=weight_per_vote)


# Rows per solver call: bounds the memory of the stacked design (without length control a fit has at most
# 4 * versions^2 rows, so every resample fits in one call; with it, four rows per vote).
ROWS_PER_CALL = 400_000


def _fit_many(design: _Design, vote_weights: NDArray[np.float64], prior_variance: float) -> NDArray[np.float64]:
    """The coefficients for each column of `vote_weights` (votes x fits: ones for the data, counts for resamples).

    Fits are stacked into one logistic regression with a block-diagonal design, one block per fit: the log loss and
    the L2 penalty separate over the blocks, so its optimum is each fit's own optimum, found in one solver call
    (bench/leaderboard.py: 18 times faster than one call per resample without length control, 1.6 times with it).
    scikit-learn minimises 0.5 * |theta|^2 + C * sum(weight * log loss): C is the prior's variance.
    """
    rows, columns = design.features.shape
    per_call = max(1, ROWS_PER_CALL // rows)
    results = []
    for start in range(0, vote_weights.shape[1], per_call):
        batch = vote_weights[:, start : start + per_call]
        fits = batch.shape[1]
        row_weights = np.asarray(design.weight_per_vote @ batch).T.ravel()  # (fits * rows,), fit-major
        features = kron(identity(fits, format="csr"), csr_array(design.features), format="csr")
        labels = np.tile(design.labels, fits)
        keep = row_weights > 0
        model = LogisticRegression(C=prior_variance, fit_intercept=False, solver="lbfgs", tol=1e-10, max_iter=10_000)
        model.fit(features[keep], labels[keep], sample_weight=row_weights[keep])
        results.append(np.asarray(model.coef_[0], dtype=np.float64).reshape(fits, columns))
    return np.concatenate(results)


def bradley_terry_fit(
    votes: list[Vote],
    *,
    versions: list[str],
    prior_variance: float = DEFAULT_PRIOR_VARIANCE,
    length_control: bool = False,
) -> tuple[dict[str, float], float | None]:
    """The fitted strengths in logits (mean zero over `versions`), and the length coefficient if asked for."""
    index = {version: number for number, version in enumerate(versions)}
    design = _design(votes, index, length_control=length_control)
    coefficients = _fit_many(design, np.ones((len(votes), 1)), prior_variance)[0]
    strengths = {version: float(coefficients[number]) for version, number in index.items()}
    return strengths, float(coefficients[-1]) if length_control else None


def _connected(votes: list[Vote], versions: list[str], anchor: str) -> set[str]:
    """The versions joined to the anchor by a chain of votes: only their differences to it are identified."""
    index = {version: number for number, version in enumerate(versions)}
    edges = coo_array(
        (np.ones(len(votes)), ([index[v.version_a] for v in votes], [index[v.version_b] for v in votes])),
        shape=(len(versions), len(versions)),
    )
    _, labels = connected_components(edges, directed=False)
    return {version for version in versions if labels[index[version]] == labels[index[anchor]]}


def _ranked(
    versions: list[str], point: NDArray[np.float64], samples: NDArray[np.float64], confidence: float
) -> list[Rating]:
    """Ratings on the scale with percentile intervals, ranked by non-overlapping intervals, best first."""
    tail = (1 - confidence) / 2 * 100
    lower, upper = np.percentile(samples, [tail, 100 - tail], axis=0)
    scaled = [(ANCHOR_RATING + POINTS_PER_LOGIT * value) for value in (point, lower, upper)]
    ratings = []
    for number, version in enumerate(versions):
        above = sum(1 for other in range(len(versions)) if scaled[1][other] > scaled[2][number])
        ratings.append(
            Rating(
                version=version,
                rating=float(scaled[0][number]),
                lower=float(scaled[1][number]),
                upper=float(scaled[2][number]),
                rank=1 + above,
            )
        )
    return sorted(ratings, key=lambda rating: (rating.rank, -rating.rating, rating.version))


def _records(votes: list[Vote]) -> tuple[dict[str, Record], dict[tuple[str, str], Record]]:
    overall: dict[str, Record] = defaultdict(Record)
    matrix: dict[tuple[str, str], Record] = defaultdict(Record)
    for vote in votes:
        for version, opponent, as_a in (
            (vote.version_a, vote.version_b, True),
            (vote.version_b, vote.version_a, False),
        ):
            overall[version] = overall[version].add(vote.outcome, as_a=as_a)
            matrix[version, opponent] = matrix[version, opponent].add(vote.outcome, as_a=as_a)
    return dict(overall), dict(matrix)


def leaderboard_compute(
    votes: list[Vote],
    *,
    anchor: str | None = None,
    bootstrap_rounds: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
    prior_variance: float = DEFAULT_PRIOR_VARIANCE,
    length_control: bool = False,
) -> Leaderboard:
    """Ratings with bootstrap intervals and ranks, records and the win-rate matrix for head-to-head `votes`.

    `anchor` is the reference version (rating 1000); default: the first version named in the votes. Votes
    between one version and itself are not head-to-head and raise ValueError, as does an anchor without votes.
    """
    if any(vote.version_a == vote.version_b for vote in votes):
        raise ValueError("a vote between a version and itself is not a head-to-head vote")
    if any(vote.outcome not in OUTCOMES for vote in votes):
        raise ValueError(f"an outcome is one of {', '.join(OUTCOMES)}")
    if bootstrap_rounds < 1:
        raise ValueError("bootstrap_rounds must be at least 1")
    named = list(dict.fromkeys(version for vote in votes for version in (vote.version_a, vote.version_b)))
    records, matrix = _records(votes)
    if not votes:
        return Leaderboard(anchor or "", [], records, matrix, [], bootstrap_rounds, 0)
    anchor = anchor if anchor is not None else named[0]
    if anchor not in named:
        raise ValueError(f"the reference version {anchor!r} has no head-to-head votes")
    connected = _connected(votes, named, anchor)
    versions = [version for version in named if version in connected]
    rated_votes = [vote for vote in votes if vote.version_a in connected]
    index = {version: number for number, version in enumerate(versions)}
    anchor_column = index[anchor]
    rng = np.random.default_rng(seed)
    count = len(rated_votes)
    # Column 0: the data itself; then one column of vote counts per bootstrap resample.
    weights = np.ones((count, 1 + bootstrap_rounds))
    for column in range(1, 1 + bootstrap_rounds):
        weights[:, column] = np.bincount(rng.integers(0, count, count), minlength=count)

    def fitted(length: bool) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """The full-data fit and the bootstrap fits, each anchored: the anchor's column is 0 in every one."""
        coefficients = _fit_many(_design(rated_votes, index, length_control=length), weights, prior_variance)
        coefficients[:, : len(versions)] -= coefficients[:, [anchor_column]]
        return coefficients[0], coefficients[1:]

    point, samples = fitted(False)
    board = Leaderboard(
        anchor=anchor,
        ratings=_ranked(versions, point, samples, confidence),
        records=records,
        matrix=matrix,
        unconnected=[version for version in named if version not in connected],
        bootstrap_rounds=bootstrap_rounds,
        votes=len(votes),
    )
    if not length_control:
        return board
    point, samples = fitted(True)
    tail = (1 - confidence) / 2 * 100
    lower, upper = np.percentile(samples[:, -1], [tail, 100 - tail])
    return replace(
        board,
        length_effect=LengthEffect(coefficient=float(point[-1]), lower=float(lower), upper=float(upper)),
        length_controlled=_ranked(versions, point[:-1], samples[:, :-1], confidence),
    )
