from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.training.samples import HH_RLHF_PATH, TINY_PAIRS, pair
from training.data import hh_rlhf_to_trl, load_pairs, messages_from, parse_pair, write_pairs


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_pairs_reads_what_write_pairs_wrote(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    write_pairs(TINY_PAIRS, path)

    assert load_pairs(path) == TINY_PAIRS


def test_load_pairs_skips_blank_lines_and_drops_extra_keys(tmp_path: Path) -> None:
    row = {**TINY_PAIRS[0], "pair_id": 17, "annotator": "ann"}
    path = write_lines(tmp_path / "pairs.jsonl", ["", json.dumps(row), "   "])

    assert load_pairs(path) == [TINY_PAIRS[0]]


def test_load_pairs_names_every_bad_line(tmp_path: Path) -> None:
    good = json.dumps(TINY_PAIRS[0])
    no_rejected = json.dumps({"prompt": TINY_PAIRS[1]["prompt"], "chosen": TINY_PAIRS[1]["chosen"]})
    user_answer = json.dumps({**TINY_PAIRS[2], "chosen": [{"role": "user", "content": "Hi"}]})
    path = write_lines(tmp_path / "pairs.jsonl", [good, "{not json", good, no_rejected, user_answer])

    with pytest.raises(ValueError) as error:
        load_pairs(path)

    message = str(error.value)
    assert message.startswith("3 invalid preference pair(s)")
    assert f"{path}:2: not valid JSON" in message
    assert f"{path}:4: missing key(s) ['rejected']" in message
    assert f"{path}:5: chosen[0].role must be one of ['assistant', 'gpt'], got 'user'" in message
    assert f"{path}:1:" not in message and f"{path}:3:" not in message


def test_load_pairs_keeps_weights_and_refuses_bad_ones(tmp_path: Path) -> None:
    weighted = [{**row, "weight": weight} for row, weight in zip(TINY_PAIRS[:3], (0, 1.5, 1.5), strict=True)]
    path = write_lines(tmp_path / "weighted.jsonl", [json.dumps(row) for row in weighted])
    assert [row.get("weight") for row in load_pairs(path)] == [0.0, 1.5, 1.5]

    bad = [{**TINY_PAIRS[0], "weight": -1}, {**TINY_PAIRS[1], "weight": "heavy"}, {**TINY_PAIRS[2], "weight": True}]
    with pytest.raises(ValueError) as error:
        load_pairs(write_lines(tmp_path / "bad.jsonl", [json.dumps(row) for row in bad]))
    assert str(error.value).count("weight must be a finite number >= 0") == 3
    with pytest.raises(ValueError, match="1 of 2 pairs carry a weight"):
        load_pairs(write_lines(tmp_path / "mixed.jsonl", [json.dumps(weighted[1]), json.dumps(TINY_PAIRS[0])]))
    with pytest.raises(ValueError, match="every pair's weight is 0"):
        load_pairs(write_lines(tmp_path / "zero.jsonl", [json.dumps({**TINY_PAIRS[0], "weight": 0})]))


def test_load_pairs_rejects_a_file_without_pairs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="holds no preference pairs"):
        load_pairs(write_lines(tmp_path / "empty.jsonl", ["", ""]))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([1, 2], "must be a JSON object"),
        ({**TINY_PAIRS[0], "rejected": TINY_PAIRS[0]["chosen"]}, "chosen and rejected are identical"),
        ({**TINY_PAIRS[0], "prompt": []}, "prompt must be a non-empty list"),
        ({**TINY_PAIRS[0], "prompt": "Hi"}, "prompt must be a non-empty list"),
        (
            {**TINY_PAIRS[0], "prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
            "the prompt must end with a user message",
        ),
        ({**TINY_PAIRS[0], "chosen": [{"role": "assistant", "content": 3}]}, r"chosen\[0\].content must be a string"),
        ({**TINY_PAIRS[0], "chosen": [{"role": "assistant"}]}, r"chosen\[0\] needs \"role\" and \"content\""),
        ({**TINY_PAIRS[0], "rejected": [{"role": "tool", "content": "x"}]}, r"rejected\[0\].role must be one of"),
    ],
)
def test_parse_pair_explains_what_is_wrong(row: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_pair(row)


def test_an_empty_answer_is_a_valid_choice() -> None:
    row = pair("Tell me how to pick a lock.", "", "Sure, first you ...")

    assert parse_pair(row) == row


def test_hh_rlhf_row_becomes_a_conversational_pair() -> None:
    shared = "\n\nHuman: How do I bake bread?\n\nAssistant: With flour.\n\nHuman: And then?"
    row = {"chosen": shared + "\n\nAssistant: Knead it and bake it.", "rejected": shared + "\n\nAssistant: Give up."}

    assert hh_rlhf_to_trl(row) == {
        "prompt": [
            {"role": "user", "content": "How do I bake bread?"},
            {"role": "assistant", "content": "With flour."},
            {"role": "user", "content": "And then?"},
        ],
        "chosen": [{"role": "assistant", "content": "Knead it and bake it."}],
        "rejected": [{"role": "assistant", "content": "Give up."}],
    }


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"chosen": "\n\nHuman: Hi\n\nAssistant: Yo", "rejected": "\n\nHuman: Hi\n\nAssistant: Yo"}, "identical"),
        (
            {"chosen": "\n\nHuman: Hi\n\nAssistant: Yo", "rejected": "\n\nHuman: Hello\n\nAssistant: Yo"},
            "differ before their last assistant turn",
        ),
        (
            {"chosen": "\n\nHuman: Hi\n\nAssistant: Yo", "rejected": "\n\nHuman: Hi\n\nAssistant: Yo "},
            "chosen and rejected are identical",
        ),
        ({"chosen": "Hi there", "rejected": "\n\nHuman: Hi\n\nAssistant: Yo"}, "not .* turns"),
        ({"chosen": "\n\nHuman: Hi", "rejected": "\n\nHuman: Hi\n\nAssistant: Yo"}, "not .* turns"),
        (
            {"chosen": "\n\nAssistant: Hi\n\nHuman: Yo", "rejected": "\n\nAssistant: Hi\n\nHuman: No"},
            "must end with a human turn followed by an assistant turn",
        ),
        ({"chosen": "\n\nHuman: Hi\n\nAssistant: Yo"}, 'string "chosen" and "rejected"'),
    ],
)
def test_hh_rlhf_rows_without_a_usable_preference_are_refused_with_a_reason(row: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hh_rlhf_to_trl(row)


def test_real_hh_rlhf_rows_convert_cleanly() -> None:
    pairs, refused = [], []
    for line in HH_RLHF_PATH.read_text(encoding="utf-8").splitlines():
        try:
            pairs.append(hh_rlhf_to_trl(json.loads(line)))
        except ValueError as error:
            refused.append(str(error))

    assert len(pairs) + len(refused) == 1000
    assert len(pairs) >= 990
    assert all(parse_pair(row) == row for row in pairs)
    assert all(row["prompt"][0]["role"] == "user" and len(row["chosen"]) == 1 for row in pairs)


def test_messages_from_accepts_sharegpt_and_returns_openai_style() -> None:
    sharegpt = [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello!", "weight": 1},
    ]

    assert messages_from(sharegpt, "conversations") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    openai = [{"role": "user", "content": "Hi", "name": "ann"}]
    assert messages_from(openai, "messages") == [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    ("value", "options", "message"),
    [
        ([], {}, "where must be a non-empty list of messages"),
        ({"role": "user", "content": "Hi"}, {}, "where must be a non-empty list of messages"),
        (["Hi"], {}, r"where\[0\] must be an object"),
        ([{"role": "user"}], {}, r"where\[0\] needs \"role\" and \"content\""),
        ([{"from": "human", "text": "Hi"}], {}, r"where\[0\] needs .*ShareGPT"),
        ([{"from": "bot", "value": "Hi"}], {}, r"where\[0\].from must be one of .*'gpt'.*got 'bot'"),
        ([{"role": "user", "content": ["Hi"]}], {}, r"where\[0\].content must be a string"),
        ([{"role": "user", "content": "  "}], {}, r"where\[0\].content must not be blank"),
        (
            [{"from": "human", "value": "Hi"}],
            {"roles": ("assistant",)},
            r"where\[0\].from must be one of \['assistant', 'gpt'\]",
        ),
    ],
)
def test_messages_from_names_the_place(value: object, options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        messages_from(value, "where", **options)  # type: ignore[arg-type]


def test_messages_from_allows_empty_content_when_asked() -> None:
    assert messages_from([{"role": "assistant", "content": ""}], "chosen", allow_empty_content=True) == [
        {"role": "assistant", "content": ""}
    ]


def test_a_sharegpt_pair_trains_as_an_openai_pair() -> None:
    row = {
        "prompt": [{"from": "human", "value": "Say hello."}],
        "chosen": [{"from": "gpt", "value": "Hello!"}],
        "rejected": [{"from": "gpt", "value": "Go away."}],
    }

    assert parse_pair(row) == pair("Say hello.", "Hello!", "Go away.")
