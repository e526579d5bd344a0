"""Multi-turn conversations after the page (annotate.turns): a round trains on their last turn with the whole
conversation as the prompt and says how many it used; exports carry them in TRL's conversational formats, which load
with `datasets` and render through the model's own chat template."""

import json
import uuid
from pathlib import Path

import pytest
from django.urls import reverse

from annotate.data import exports
from annotate.data.exports import ExportFilters
from annotate.models import Campaign, Continuation, Export
from annotate.rounds import services as rounds
from annotate.turns import services as turns
from tests.annotate.model_server_stub import ModelServerStub
from tests.annotate.voting import vote_as_annotator
from tests.conftest import REPO

pytestmark = pytest.mark.django_db

BASE_MODEL_DIR = REPO / "var" / "models" / "smollm2-135m-instruct"


@pytest.fixture
def conversations(settings, tmp_path, make_pair, annotator, serving_version):
    """Six first-turn votes, each continued by the annotator, whose second pair they vote on too (a worker makes
    each continued pair, as without JavaScript)."""
    settings.ROUND_DIR = tmp_path / "rounds"
    settings.EXPORT_DIR = tmp_path / "exports"
    settings.ROUND_MIN_TRAIN_PAIRS = 2
    settings.ROUND_HOLDOUT_FRACTION = 0.25
    Campaign.objects.create(name="talk", continuation_allowed=True)
    server = ModelServerStub(served_models=(serving_version.name,))
    with server.running():
        settings.VLLM_BASE_URL = server.url
        for number in range(6):
            pair = make_pair(
                texts=(f"short {number}", f"a much longer answer {number}"),
                messages=[{"role": "user", "content": f"Tell me about tea number {number}."}],
                prompt_set="talk",
            )
            vote_as_annotator(annotator, pair=pair, choice="a")
            started = turns.continuation_start(
                annotator=annotator, pair_id=pair.pk, message=f"Why {number}?", idempotency_key=uuid.uuid4()
            )
            assert turns.continuation_pair_make(continuation_id=started.continuation.pk)
            started.continuation.refresh_from_db()
            vote_as_annotator(annotator, pair=started.continuation.pair, choice="b")
    return Continuation.objects.select_related("pair", "prompt")


def test_a_round_trains_multi_turn_pairs_on_their_last_turn_and_says_how_many(client, staff, conversations):
    training_round = rounds.round_start(trigger="api")
    train_path, heldout_path = rounds.round_prepare(training_round)

    rows = [json.loads(line) for path in (train_path, heldout_path) for line in path.read_text().splitlines()]
    multi = [row for row in rows if turns.is_multi_turn(row["prompt"])]
    assert len(rows) == 12 and len(multi) == 6
    by_prompt = {continuation.prompt.messages[-1]["content"]: continuation for continuation in conversations}
    for row in multi:
        continuation = by_prompt[row["prompt"][-1]["content"]]
        assert row["prompt"] == continuation.prompt.messages  # the whole conversation is the prompt
        assert [message["role"] for message in row["prompt"]] == ["user", "assistant", "user"]
        assert row["chosen"] == [{"role": "assistant", "content": continuation.pair.completion_b.text}]
    training_round.refresh_from_db()
    train_multi = sum(turns.is_multi_turn(json.loads(line)["prompt"]) for line in train_path.read_text().splitlines())
    assert (training_round.multi_turn_train_pairs, training_round.multi_turn_heldout_pairs) == (
        train_multi,
        6 - train_multi,
    )

    client.force_login(staff)
    page = client.get(reverse("round-detail", args=[training_round.pk]))
    assert f"{train_multi} of the training pairs and {6 - train_multi} of the held-out ones" in page.content.decode()
    api = client.get(f"/api/rounds/{training_round.pk}/").json()
    assert api["multi_turn_train_pairs"] == train_multi


@pytest.mark.parametrize("dataset_format", ["trl-preference", "trl-unpaired"])
def test_exports_load_with_datasets_in_trls_conversational_format(conversations, staff, dataset_format):
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    export = exports.export_create(
        created_by=staff, dataset_format=dataset_format, file_format="jsonl", filters=ExportFilters()
    )
    export = exports.export_run(export=export)
    assert export.status == Export.Status.DONE

    card = Path(export.path).with_suffix(".md").read_text(encoding="utf-8")
    assert "| verdicts on multi-turn conversations (the whole conversation is the prompt) | 6 |" in card
    dataset = load_dataset("json", data_files=export.path, split="train")
    multi = [row for row in dataset if turns.is_multi_turn(row["prompt"])]
    assert len(multi) == (6 if dataset_format == "trl-preference" else 12)  # unpaired: a row per answer
    tokenizer = AutoTokenizer.from_pretrained(BASE_MODEL_DIR)
    for row in multi:
        assert is_conversational(row)
        rendered = maybe_apply_chat_template(row, tokenizer)
        # The chat template renders every turn of the conversation into the prompt, the last user turn last.
        earlier_answer = row["prompt"][1]["content"]
        assert earlier_answer in rendered["prompt"]
        assert rendered["prompt"].index(earlier_answer) < rendered["prompt"].index(row["prompt"][-1]["content"])


def test_arena_export_counts_the_turns(conversations, staff):
    export = exports.export_run(
        export=exports.export_create(
            created_by=staff, dataset_format="arena", file_format="jsonl", filters=ExportFilters()
        )
    )
    rows = [json.loads(line) for line in Path(export.path).read_text(encoding="utf-8").splitlines()]
    assert sorted(row["turn"] for row in rows) == [1] * 6 + [2] * 6
    assert all(len(row["conversation_a"]) == 2 * row["turn"] for row in rows)
