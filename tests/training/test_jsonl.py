"""training.jsonl: the one JSON Lines writer (rounds' data files, exports, benchmarks)."""

import json
import math

from training.jsonl import JsonLinesWriter, write_jsonl


def test_rows_read_back_with_the_standard_library_as_written(tmp_path):
    rows = [
        {"prompt": [{"role": "user", "content": 'Ça va? 你好 🙂\nline two\t"quoted"'}], "weight": 0.1 + 0.2},
        {"counts": {1: 3, 2: 5}, "nested": [[], {}, None, True, 10**18]},
    ]
    path = tmp_path / "rows.jsonl"
    assert write_jsonl(path, rows) == 2
    text = path.read_text(encoding="utf-8")
    assert "Ça va? 你好 🙂" in text  # characters as they are, no \\u escapes
    assert text.count("\n") == 2  # one row a line: the newline inside the content is escaped
    back = [json.loads(line) for line in text.splitlines()]
    assert back[0] == rows[0]
    assert back[1] == {"counts": {"1": 3, "2": 5}, "nested": [[], {}, None, True, 10**18]}  # keys become strings


def test_not_a_number_is_written_as_null_which_strict_readers_accept(tmp_path):
    path = tmp_path / "nan.jsonl"
    with JsonLinesWriter(path) as writer:
        writer.write({"loss": math.nan, "eta": math.inf})
    assert json.loads(path.read_text(), parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name))) == {
        "loss": None,
        "eta": None,
    }
