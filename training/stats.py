"""Small statistics shared by training and the Django side (no torch, no Django: annotate may import it)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

# Two-sided 95 % normal quantile.
Z_95 = NormalDist().inv_cdf(0.975)
# Evidence this close to 0 is a draw: with a symmetric test the steps of a win and a loss differ in the last bits, and
# as many wins as losses must not lean either way by rounding.
EVIDENCE_TOLERANCE = 1e-9
# A chance this small of a test still running is left out of its outlook: it cannot change a figure the page shows.
NEGLIGIBLE = 1e-12


def wilson_interval(successes: float, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % by default).

    Wilson rather than the normal approximation because our samples are small (tens of votes or held-out pairs) and
    a good model's share may sit near 1, where the normal interval is too narrow and can leave [0, 1]; Wilson keeps
    close to its stated coverage there. A tie counts half a success, so `successes` may be fractional."""
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be between 0 and trials ({trials}), got {successes}")
    share = successes / trials
    denominator = 1 + z * z / trials
    centre = (share + z * z / (2 * trials)) / denominator
    half_width = z / denominator * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


@dataclass(frozen=True)
class WinRateTest:
    """Wald's sequential probability ratio test on a win rate, ties counting half a win: valid at every look.

    H0: the win rate is at most `null_win_rate` (the candidate is worse than its parent beyond the margin staff allow)
    against H1: it is at least `target_win_rate`. After each vote the log-likelihood ratio of H1 to H0 moves up (a
    win), down (a loss) or halfway (a tie); the test accepts H1 when it reaches log((1 - beta) / alpha) and H0 when it
    falls to log(beta / (1 - alpha)), so a team may look after every vote without inflating its errors.

    Why this test: untruncated, it is the sequential test with the fewest votes on average at H0 and H1 among tests with
    the same errors (Wald and Wolfowitz), its two bounds are closed forms a sentence can state, and the state the round
    page needs (score and votes) is the tally it already keeps. Why it stays valid with ties as half: the likelihood
    ratio of one vote, (p1/p0)^x ((1-p1)/(1-p0))^(1-x), is convex in the score x, so for x in [0, 1] its mean is at most
    that of a vote whose win or loss has the same mean score, which is 1 at p0 and less below it: the ratio is a
    nonnegative supermartingale under H0 and Ville's inequality keeps the chance of ever reaching the upper bound under
    alpha / (1 - beta) (Wald's bound, a hair above alpha), however long it runs and whenever it is read. Neither scipy
    nor statsmodels ships a sequential test; the PyPI packages that do are months old or unmaintained, and the test is
    two logarithms.

    Before `min_votes` it does not stop (a handful of annotators should not decide alone; the bound on wrongly serving
    holds at any stopping time, so waiting does not weaken it). Truncation: at `max_votes` undecided, the test stops
    where it stands and accepts H1 only if the evidence leans to it (a positive log-likelihood ratio: the win rate is
    above `midpoint`); truncating can only lower the chance of reaching the upper bound, so alpha still bounds serving a
    worse candidate by the bound, and bench/canary_power.py measures what the lean adds.
    """

    null_win_rate: float
    target_win_rate: float
    alpha: float
    beta: float
    min_votes: int
    max_votes: int

    def __post_init__(self) -> None:
        if not 0 < self.null_win_rate < self.target_win_rate < 1:
            raise ValueError(
                f"need 0 < null_win_rate ({self.null_win_rate}) < target_win_rate ({self.target_win_rate}) < 1"
            )
        if not (0 < self.alpha < 0.5 and 0 < self.beta < 0.5):
            raise ValueError(f"alpha ({self.alpha}) and beta ({self.beta}) must be in (0, 0.5)")
        if not 1 <= self.min_votes <= self.max_votes:
            raise ValueError(f"need 1 <= min_votes ({self.min_votes}) <= max_votes ({self.max_votes})")

    @property
    def win_step(self) -> float:
        return math.log(self.target_win_rate / self.null_win_rate)

    @property
    def loss_step(self) -> float:
        return math.log((1 - self.target_win_rate) / (1 - self.null_win_rate))  # negative

    @property
    def upper(self) -> float:
        return math.log((1 - self.beta) / self.alpha)

    @property
    def lower(self) -> float:
        return math.log(self.beta / (1 - self.alpha))

    @property
    def midpoint(self) -> float:
        """The win rate at which a vote moves the evidence neither way (between the two hypotheses)."""
        return -self.loss_step / (self.win_step - self.loss_step)

    def log_likelihood_ratio(self, score: float, votes: int) -> float:
        """Evidence for H1 over H0 after `votes` votes scoring `score` (wins plus half the ties)."""
        return score * self.win_step + (votes - score) * self.loss_step

    def verdict(self, score: float, votes: int) -> bool | None:
        """True: accept H1 (the candidate is good enough); False: accept H0; None: keep collecting votes."""
        if votes < self.min_votes:
            return None
        evidence = self.log_likelihood_ratio(score, votes)
        if evidence >= self.upper:
            return True
        if evidence <= self.lower:
            return False
        if votes >= self.max_votes:
            return self.lean(score, votes)
        return None

    def lean(self, score: float, votes: int) -> bool:
        """The truncation rule: where the evidence leans when the test must stop undecided (a draw keeps the parent)."""
        return self.log_likelihood_ratio(score, votes) > EVIDENCE_TOLERANCE

    def outlook(self, *, win_share: float, tie_share: float, score: float = 0.0, votes: int = 0) -> tuple[float, float]:
        """(chance the test ends accepting H1, expected further votes) when each further vote is a win, a tie or a
        loss with the given shares, from a test standing at `score` of `votes`. Exact, by carrying the distribution
        of the undecided score vote by vote up to `max_votes` (no simulation, no approximation)."""
        loss_share = 1 - win_share - tie_share
        if min(win_share, tie_share, loss_share) < -1e-12:
            raise ValueError(f"shares must be in [0, 1] and sum to at most 1: {win_share}, {tie_share}")
        decided = self.verdict(score, votes)
        if decided is not None:
            return float(decided), 0.0
        # Score in half votes above the start, so a tie is one step and a win two; `undecided[i]` is the chance of
        # standing undecided at `offset + i` half votes. Only the band between the bounds is kept, so a long test
        # costs its length times the band's width (a few dozen), not its length squared.
        undecided, offset = np.array([1.0]), 0
        accepted = expected = 0.0
        for added in range(1, self.max_votes - votes + 1):
            expected += undecided.sum()  # every path still undecided casts one more vote
            moved = np.zeros(len(undecided) + 2)
            moved[:-2] += undecided * max(loss_share, 0.0)
            moved[1:-1] += undecided * tie_share
            moved[2:] += undecided * win_share
            scores = score + (offset + np.arange(len(moved))) / 2
            evidence = scores * self.win_step + (votes + added - scores) * self.loss_step
            if votes + added >= self.max_votes:
                # The upper bound is positive, so the lean counts what reached it too.
                accepted += moved[evidence > EVIDENCE_TOLERANCE].sum()
                break
            if votes + added < self.min_votes:
                undecided = moved
                continue
            accepted += moved[evidence >= self.upper].sum()
            inside = np.flatnonzero((evidence > self.lower) & (evidence < self.upper))
            if len(inside) == 0 or moved[inside].sum() < NEGLIGIBLE:
                break
            undecided, offset = moved[inside[0] : inside[-1] + 1], offset + inside[0]
        return float(accepted), float(expected)
