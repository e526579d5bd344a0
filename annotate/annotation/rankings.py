"""Rankings of K answers (a campaign's answers_per_pair of 3 or 4; issue 19 part 2): what a valid ranking is, how
the ranks an annotator gave on screen become ranks by the pair's own positions, what A/B choice a ranking stands
for, and which preference pairs it implies for training.

A ranking is a weak order: each answer gets a rank from 1 (best) to K, equal ranks are a tie. Ranks are read for
their order only, so [1, 3, 3] and [1, 2, 2] say the same; they are stored dense (1, 2, ...). "All bad" is its own
answer: every answer tied and the choice both_bad, so it implies no pair (like a both-bad vote).

Which pairs a ranking implies, and why: every two answers with different ranks, the better one chosen. Not only
neighbours in the order: DPO learns from each (chosen, rejected) pair on its own, and the far pairs (best against
worst) are the clearest preferences a ranking holds. Tied answers imply nothing (a tie says neither is preferred).

How much they weigh: together exactly K - 1, the number of votes that would order K answers one neighbour at a
time, so a ranking counts like K - 1 votes and never like the K(K-1)/2 pairs it may list (those are not independent
judgements: they all come from one look at the same answers). Each implied pair weighs (K - 1) / n for its
ranking's n implied pairs; n is at least K - 1 unless every answer is tied, so no implied pair outweighs a vote.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

from annotate.models import MAX_ANSWERS_PER_PAIR, Judgement

# What a ranking form posts as its choice: a ranking, or every answer bad.
RANK = "rank"
ALL_BAD = "all_bad"
RANKING_CHOICES = (RANK, ALL_BAD)


def ranks_errors(ranks: Sequence[object], answer_count: int | None = None) -> str | None:
    """Why `ranks` (one per answer shown) is not a ranking of `answer_count` answers; None when it is one. Without
    a count (the pair not known yet) only what no pair allows is found: more than MAX_ANSWERS_PER_PAIR ranks, or a
    rank out of 1..MAX_ANSWERS_PER_PAIR."""
    if not isinstance(ranks, Sequence) or isinstance(ranks, str | bytes):
        return "must be a list of ranks, one per answer"
    expected = answer_count
    if expected is None and len(ranks) > MAX_ANSWERS_PER_PAIR:
        return f"must give at most {MAX_ANSWERS_PER_PAIR} ranks, one per answer"
    if expected is not None and len(ranks) != expected:
        return f"must give exactly {expected} ranks, one per answer shown (got {len(ranks)})"
    top = expected or MAX_ANSWERS_PER_PAIR
    if any(isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= top for rank in ranks):
        return f"each rank must be a whole number from 1 (best) to {top}"
    return None


def ranks_dense(ranks: Sequence[float]) -> list[int]:
    """The same order with ranks 1, 2, ... and no gaps: [1, 3, 3] becomes [1, 2, 2]."""
    levels = {rank: index for index, rank in enumerate(sorted(set(ranks)), start=1)}
    return [levels[rank] for rank in ranks]


def ranking_by_position(ranks_on_screen: Sequence[int], answer_order: Sequence[int]) -> list[int]:
    """Ranks by the pair's own positions (A, B, extras) from ranks by screen place; `answer_order` lists the
    position shown at each place (Assignment.answer_order)."""
    ranking = [0] * len(answer_order)
    for place, position in enumerate(answer_order):
        ranking[position] = ranks_on_screen[place]
    return ranks_dense(ranking)


def ranking_all_bad(answer_count: int) -> list[int]:
    return [1] * answer_count


def choice_of_ranking(ranking: Sequence[int], *, all_bad: bool = False) -> str:
    """What a ranking says of A (position 0) against B (position 1), for everything that reads choices."""
    if all_bad:
        return Judgement.Choice.BOTH_BAD
    if ranking[0] < ranking[1]:
        return Judgement.Choice.A
    if ranking[1] < ranking[0]:
        return Judgement.Choice.B
    return Judgement.Choice.TIE


def choice_between(ranking: Sequence[int], first: int, second: int, *, all_bad: bool = False) -> str:
    """What a ranking says of two of its answers, as a vote on them: a (the first ranked better), b, tie, or
    both_bad when the ranking said all bad."""
    if all_bad:
        return Judgement.Choice.BOTH_BAD
    if ranking[first] == ranking[second]:
        return Judgement.Choice.TIE
    return Judgement.Choice.A if ranking[first] < ranking[second] else Judgement.Choice.B


def ranking_top(ranking: Sequence[int]) -> int | None:
    """The position of the single answer ranked best; None when several share the first place (or all are bad)."""
    best = [position for position, rank in enumerate(ranking) if rank == min(ranking)]
    return best[0] if len(best) == 1 else None


def implied_pairs(ranking: Sequence[int]) -> list[tuple[int, int]]:
    """(better, worse) positions for every two answers with different ranks, in position order."""
    pairs = []
    for first, second in combinations(range(len(ranking)), 2):
        if ranking[first] < ranking[second]:
            pairs.append((first, second))
        elif ranking[second] < ranking[first]:
            pairs.append((second, first))
    return pairs


def implied_pair_weight(answer_count: int, implied: int) -> float:
    """The weight of each of a ranking's `implied` pairs: together K - 1 (see the module's docstring)."""
    return (answer_count - 1) / implied if implied else 0.0


def ranking_describe(ranking: Sequence[int], labels: Sequence[str]) -> str:
    """A ranking in words, best first, ties joined by '='; e.g. "B > A = D > C"."""
    levels: dict[int, list[str]] = {}
    for position, rank in enumerate(ranking):
        levels.setdefault(rank, []).append(labels[position])
    return " > ".join(" = ".join(levels[rank]) for rank in sorted(levels))
