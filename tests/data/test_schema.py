"""Stored problems are validated record by record: wrong types, lengths and values are errors that
name the file, the row (and line) and the field; nothing is silently coerced."""

from __future__ import annotations

import re

import datasets
import pytest

from nemo_gradalign.data import store

BAD_ROWS = [
    ('{"op": "sort", "digits": "0123", "corrupted": "false"}',
     r"row 1 \(line 2\): field corrupted: Input should be a valid boolean \(got 'false', a str\)"),
    ('{"op": "sort", "digits": 123}', r"row 1 \(line 2\): field digits: .*an integer loses leading zeros"),
    ('{"op": "sort", "digits": "0123", "key": "12", "wrong_key": true}',
     r"row 1 \(line 2\): key: '12' must be 4 digits, as many as digits '0123'"),
    ('{"op": "sort", "digits": "0123", "wrong_key": true}', r"wrong_key: true, but the record has no key"),
    ('{"op": "multiply", "digits": "12"}', r"op: unknown op 'multiply'"),
    ('{"op": "sort", "digits": "1234567"}', r"digits: '1234567' must be 2 to 6 characters 0-9"),
    ('{"op": "sort", "digits": "12", "problem_id": "7"}', r"field problem_id: Input should be a valid integer"),
    ('{"op": "sort", "digit": "12"}', r"field digits: Field required"),
    ('{"op": "sort", "digits": "12"', r"line 2: not JSON"),
    ('["sort", "12"]', r"row 1 \(line 2\): expected an object with op and digits"),
    ('{"op": "sort", "digits": "0123", "problem_id": 0}', r"row 1: problem_id 0 repeats row 0"),
]


@pytest.mark.parametrize("row, message", BAD_ROWS, ids=[m[:24] for _, m in BAD_ROWS])
def test_a_bad_jsonl_record_names_file_row_and_field(tmp_path, row, message):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"op": "sort", "digits": "0123", "problem_id": 0}\n' + row + "\n")
    with pytest.raises(ValueError, match=r"pool.jsonl.*" + message):
        store.load_problems(str(path))


def test_good_records_keep_leading_zeros_and_false_flags(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text('{"op": "sort", "digits": "0123", "corrupted": false}\n\n'
                    '{"op": "reverse", "digits": "907", "key": "123", "wrong_key": true, "corrupted": null}\n')
    first, second = store.load_problems(str(path))
    assert (first.problem_id, first.digits, first.tags) == (0, [0, 1, 2, 3], {})
    assert (second.problem_id, second.key, second.tags) == (1, [1, 2, 3], {"wrong_key": True})


def test_empty_sets_are_errors_not_stopiteration(tmp_path):
    for name in ("pool.jsonl", "pool.json", "pool.parquet"):
        (tmp_path / name).write_text("")
        with pytest.raises(ValueError, match=rf"{name}: no records"):
            store.load_problems(str(tmp_path / name))


def test_parquet_columns_are_checked_too(tmp_path):
    datasets.Dataset.from_dict({"op": ["sort"], "digits": [42]}).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(ValueError, match=r"p.parquet row 0: field digits: .*loses leading zeros"):
        store.load_problems(str(tmp_path / "p.parquet"))
    datasets.Dataset.from_dict({"op": ["sort"], "digits": ["42"], "target": ["yes"]}).to_parquet(tmp_path / "q.parquet")
    with pytest.raises(ValueError, match=r"q.parquet row 0: field target: Input should be a valid boolean"):
        store.load_problems(str(tmp_path / "q.parquet"))


@pytest.mark.parametrize("name, text", [
    ("pool.jsonl", '{"op": "sort", "digits": "0123"}\n{"op": "sorté", "digits": "456"}\n'),
    ("pool.json", '[{"op": "sort", "digits": "0123"},\n {"op": "sorté", "digits": "456"}]\n')])
def test_a_file_that_is_not_utf8_names_file_line_and_byte_offset(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(text.encode("latin-1"))  # as a spreadsheet export might write it
    offset = text.index("é")  # Latin-1: one byte per character
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))} line 2: not UTF-8 text \(byte 0xe9 at byte offset {offset}: "):
        store.load_problems(str(path))
