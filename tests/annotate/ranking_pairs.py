"""Ranking pairs (issue 19 part 2) made the way a refill stores them, for the ranking tests (page, API, browser)."""

from __future__ import annotations

import pytest

from annotate.models import Campaign, Pair, Prompt
from annotate.sampling import services as sampling
from annotate.sampling.generation import Sample


def sample(text: str) -> Sample:
    seed = abs(hash(text)) % 2**31
    return Sample(text, "stop", 10, 5, 20, f"r-{seed}", {"temperature": 0.8, "top_p": 0.95, "seed": seed, "n": 1})


@pytest.fixture
def ranking_campaign(db):  # type: ignore[no-untyped-def]
    return Campaign.objects.create(name="ranked", title="Ranked", answers_per_pair=4)


@pytest.fixture
def make_ranking_pair(serving_version, ranking_campaign):  # type: ignore[no-untyped-def]
    """A pair of four answers made by the sampling service's own pair_create (as a refill stores one)."""
    counter = iter(range(1, 10_000))

    def make(count: int = 4, texts: list[str] | None = None) -> Pair:
        number = next(counter)
        prompt = Prompt.objects.create(
            messages=[{"role": "user", "content": f"Rank question {number}?"}], prompt_set="ranked", source="test"
        )
        texts = texts or [f"Answer {'ABCD'[index]} to {number}." for index in range(count)]
        pair = sampling.pair_create(
            prompt=prompt,
            version=serving_version,
            first=sample(texts[0]),
            second=sample(texts[1]),
            extra=[(serving_version, sample(text)) for text in texts[2:]],
        )
        assert pair is not None
        return pair

    return make
