"""Simulated annotator profiles (annotate/simulation.py and the simulate_annotators command)."""

from __future__ import annotations

import random
import statistics

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from annotate.annotation.simulation import (
    Profile,
    SimulatedAnnotator,
    is_non_answer,
    prefer_shorter,
    prefer_shorter_answers,
    profile_from_spec,
    profiles_from_specs,
    prompt_key_words,
    simulated_annotator_judge,
)
from annotate.models import Judgement

SHORT, LONG = "Short answer.", "A much longer answer that goes on for a while, with detail nobody asked for."


def _decisions(profile: Profile, count: int, seed: int = 7):
    rng = random.Random(seed)
    # The shorter answer is on the left half of the time, as the lease service shows sides at random.
    sides = [rng.random() < 0.5 for _ in range(count)]
    texts = [(SHORT, LONG) if short_left else (LONG, SHORT) for short_left in sides]
    decisions = [profile.decide(left=left, right=right, preference=prefer_shorter, rng=rng) for left, right in texts]
    followed = [
        decision.choice == ("left" if short_left else "right")
        for decision, short_left in zip(decisions, sides, strict=True)
    ]
    return decisions, followed


def test_careful_follows_the_taste_and_reads():
    decisions, followed = _decisions(Profile("careful"), 300)
    assert all(followed)
    assert all(decision.strength == 3 for decision in decisions)  # LONG is more than twice as long as SHORT
    assert statistics.median(decision.seconds for decision in decisions) > 4


def test_left_biased_picks_left_at_its_rate_whatever_the_taste():
    decisions, followed = _decisions(Profile("left-biased", 0.8), 1000)
    left_share = sum(decision.choice == "left" for decision in decisions) / 1000
    assert left_share == pytest.approx(0.8, abs=0.04)
    assert sum(followed) / 1000 == pytest.approx(0.5, abs=0.05)


def test_random_is_near_half_and_half():
    decisions, followed = _decisions(Profile("random"), 1000)
    assert sum(decision.choice == "left" for decision in decisions) / 1000 == pytest.approx(0.5, abs=0.05)
    assert sum(followed) / 1000 == pytest.approx(0.5, abs=0.05)
    assert {decision.strength for decision in decisions} == {1, 2, 3}


def test_noisy_follows_the_taste_with_its_probability_else_guesses():
    _, followed = _decisions(Profile("noisy", 0.6), 1000)
    # Following with probability 0.6, guessing otherwise (right half of the time): 0.6 + 0.4 / 2 = 0.8
    assert sum(followed) / 1000 == pytest.approx(0.8, abs=0.04)


def test_fast_follows_the_taste_in_under_a_second():
    decisions, followed = _decisions(Profile("fast"), 200)
    assert all(followed)
    assert all(decision.seconds < 1 for decision in decisions)


def test_profile_specs():
    assert profile_from_spec("careful") == (Profile("careful"), 1)
    assert profile_from_spec("noisy:0.8*2") == (Profile("noisy", 0.8), 2)
    assert profile_from_spec(" left-biased:0.9 ") == (Profile("left-biased", 0.9), 1)
    assert [profile.name for profile in profiles_from_specs(["careful*2", "random", "noisy:0.75"])] == [
        "careful",
        "careful",
        "random",
        "noisy:0.75",
    ]
    for spec, message in [
        ("sloppy", "the kind must be one of careful, noisy, left-biased, random, fast"),
        ("noisy", "noisy needs a probability"),
        ("noisy:lots", "noisy needs a probability"),
        ("left-biased:1.5", "between 0 and 1"),
        ("careful:0.5", "careful takes no probability"),
        ("random*0", "at least 1"),
        ("random*x", "at least 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            profile_from_spec(spec)


def test_the_command_votes_by_profile_through_the_services(make_pair):
    for number in range(60):
        make_pair(texts=(SHORT, LONG) if number % 2 else (LONG, SHORT), required=3)

    call_command(
        "simulate_annotators", "--prefer", "shorter", "--count", "180",
        "--profile", "left-biased:0.9", "--profile", "random", "--profile", "fast", verbosity=0,
    )  # fmt: skip

    users = {user.username: user for user in User.objects.filter(username__startswith="simulated-shorter-")}
    assert set(users) == {
        "simulated-shorter-left-biased-0.9-1",
        "simulated-shorter-random-2",
        "simulated-shorter-fast-3",
    }
    votes = {name: list(Judgement.objects.filter(annotator=user)) for name, user in users.items()}
    assert all(len(own) == 60 for own in votes.values())
    assert all(vote.source == "simulated" for own in votes.values() for vote in own)

    def left_share(name: str) -> float:
        return sum(vote.choice_on_screen == "left" for vote in votes[name]) / 60

    assert left_share("simulated-shorter-left-biased-0.9-1") > 0.75
    assert 0.25 < left_share("simulated-shorter-random-2") < 0.75
    fast = votes["simulated-shorter-fast-3"]
    shorter_chosen = [vote.choice == ("a" if vote.pair.completion_a.text == SHORT else "b") for vote in fast]
    assert all(shorter_chosen)
    # The time the service recorded is the one the profile took.
    assert all(vote.time_spent_ms is not None and vote.time_spent_ms < 1000 for vote in fast)
    reading = [vote.time_spent_ms for vote in votes["simulated-shorter-random-2"]]
    assert statistics.median(time for time in reading if time is not None) > 3000


def test_the_command_refuses_bad_profiles_and_changes_nothing(make_pair):
    make_pair()
    with pytest.raises(CommandError, match="the kind must be one of"):
        call_command("simulate_annotators", "--prefer", "shorter", "--count", "1", "--profile", "sloppy")
    with pytest.raises(CommandError, match="either --annotators"):
        call_command(
            "simulate_annotators", "--prefer", "shorter", "--count", "1", "--annotators", "2", "--profile", "random"
        )
    assert not Judgement.objects.exists()
    assert not User.objects.filter(username__startswith="simulated-").exists()


COFFEE = "How should I prepare for my first job interview at a coffee shop?"
ON_TOPIC = "Read about the coffee shop, practise short answers about service, and arrive ten minutes early."
SHORTER_ON_TOPIC = "Learn the coffee shop's menu and arrive a little early, dressed neatly."


def test_a_non_answer_is_too_short_or_off_the_prompts_key_words():
    assert prompt_key_words(COFFEE) == {"prepare", "first", "interview", "coffee", "shop"}
    assert not is_non_answer(ON_TOPIC, COFFEE)
    assert is_non_answer("Meet at 3:10am YYYY for the coffee.", COFFEE)  # seven words, though on topic
    assert is_non_answer("The weather is lovely today and the birds sing in the old garden trees.", COFFEE)
    # A prompt without key words leaves only the length check.
    assert not is_non_answer("Hello there, I am fine, thank you for asking me today.", "How are you?")


def test_shorter_answers_taste_prefers_the_shorter_answer_unless_it_is_a_non_answer():
    assert prefer_shorter_answers(ON_TOPIC, SHORTER_ON_TOPIC, COFFEE) == prefer_shorter(ON_TOPIC, SHORTER_ON_TOPIC)
    assert prefer_shorter_answers("Meet at 3:10am YYYY for the coffee.", ON_TOPIC, COFFEE) == ("right", 3)
    assert prefer_shorter_answers(ON_TOPIC, "Yes.", COFFEE) == ("left", 3)
    assert prefer_shorter_answers("Yes.", "No.", COFFEE) == ("both_bad", None)


@pytest.mark.django_db
def test_simulated_annotators_judge_with_the_prompt_in_view(make_pair):
    """Voting through the services, the taste sees the pair's prompt: the long answer wins only where the short one
    misses the prompt's key words (a taste blind to the prompt would pick the short one every time)."""
    off_topic = "The weather is lovely today and the birds sing in the garden."
    pairs = [
        make_pair((ON_TOPIC, off_topic), messages=[{"role": "user", "content": COFFEE}]),
        make_pair((ON_TOPIC, SHORTER_ON_TOPIC), messages=[{"role": "user", "content": COFFEE.replace("my", "a")}]),
    ]
    annotator = SimulatedAnnotator(user=User.objects.create_user("taste"), profile=Profile("careful"))
    given = simulated_annotator_judge(
        annotators=[annotator], preference=prefer_shorter_answers, limit=len(pairs), rng=random.Random(3)
    )
    assert given == len(pairs)
    choices = {judgement.pair_id: judgement.choice for judgement in Judgement.objects.filter(annotator=annotator.user)}
    assert choices == {pairs[0].pk: "a", pairs[1].pk: "b"}
