"""JSONL I/O: atomic writes and one-line validation errors naming file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reflectrl.data import (
    PLAIN_FIELDS,
    POLICY_FIELDS,
    REFLECTION_FIELDS,
    DataError,
    read_jsonl,
    write_jsonl,
)


def policy_record(**changes) -> dict:
    record = {
        "env": "reflectrl/DangerousTaxi-v0",
        "split": "train",
        "seed": 7,
        "stage": "pickup",
        "step": 0,
        "observation": "Taxi (0,0).\nHistory: none",
        "reflection": "Go south.",
        "negative": False,
        "valid_actions": ["go south", "go north"],
        "action": 0,
        "optimal_actions": [0],
    }
    record.update(changes)
    return record


def test_round_trip_and_schemas(tmp_path: Path):
    path = tmp_path / "sub" / "policy.jsonl"
    records = [policy_record(), policy_record(step=1, observation="ünïcode", action=1, optimal_actions=[1])]
    assert write_jsonl(path, records) == 2
    assert read_jsonl(path, POLICY_FIELDS) == records
    assert read_jsonl(path, REFLECTION_FIELDS) == records  # extra keys are fine
    assert path.read_text(encoding="utf-8").count("\n") == 2
    assert list(tmp_path.rglob("*.tmp")) == []
    plain = tmp_path / "plain.jsonl"
    write_jsonl(plain, [policy_record(reflection=None)])
    assert read_jsonl(plain, PLAIN_FIELDS)[0]["reflection"] is None
    with pytest.raises(DataError, match="key 'reflection' must be null, got str"):
        read_jsonl(path, PLAIN_FIELDS)


def test_schemas_match_architecture():
    assert set(REFLECTION_FIELDS) == {
        "env",
        "split",
        "seed",
        "stage",
        "step",
        "observation",
        "reflection",
        "negative",
    }
    assert set(POLICY_FIELDS) == set(REFLECTION_FIELDS) | {"valid_actions", "action", "optimal_actions"}
    assert set(PLAIN_FIELDS) == set(POLICY_FIELDS)


def test_write_is_atomic(tmp_path: Path):
    path = tmp_path / "data.jsonl"
    write_jsonl(path, [policy_record()])
    before = path.read_bytes()

    def broken():
        yield policy_record(step=5)
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_jsonl(path, broken())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]  # no temp file left
    with pytest.raises(ValueError):  # NaN is not JSON
        write_jsonl(path, [policy_record(seed=float("nan"))])
    assert path.read_bytes() == before


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD = json.dumps(policy_record())


@pytest.mark.parametrize(
    ("lines", "line", "message"),
    [
        ([GOOD, '{"env": '], 2, "invalid JSON (Expecting value at the end of the line: truncated?)"),
        ([GOOD, '{"env" 1}'], 2, "invalid JSON (Expecting ':' delimiter at column 8)"),
        ([GOOD, "", "[1, 2]"], 3, "record must be a JSON object, got list"),
        ([json.dumps({k: v for k, v in policy_record().items() if k != "stage"})], 1, "missing key 'stage'"),
        ([GOOD, json.dumps(policy_record(action="1"))], 2, "key 'action' must be int, got str"),
        ([json.dumps(policy_record(seed=True))], 1, "key 'seed' must be int, got bool"),
        ([json.dumps(policy_record(negative=0))], 1, "key 'negative' must be bool, got int"),
        ([json.dumps(policy_record(reflection=None))], 1, "key 'reflection' must be str, got null"),
        (
            [json.dumps(policy_record(action=2))],
            1,
            "key 'action' has index 2 out of range of 2 valid_actions",
        ),
        ([json.dumps(policy_record(action=-1))], 1, "key 'action' has index -1 out of range"),
        (
            [json.dumps(policy_record(optimal_actions=[0, 5]))],
            1,
            "key 'optimal_actions' has index 5 out of range",
        ),
        ([json.dumps(policy_record(valid_actions=[]))], 1, "'valid_actions' must be a non-empty list of str"),
        (
            [json.dumps(policy_record(valid_actions=["a", 3]))],
            1,
            "'valid_actions' must be a non-empty list of str",
        ),
    ],
)
def test_data_errors_name_file_and_line(tmp_path: Path, lines, line, message):
    path = write_lines(tmp_path / "policy_sft.train.jsonl", lines)
    with pytest.raises(DataError) as caught:
        read_jsonl(path, POLICY_FIELDS)
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(f"{path}:{line}: "), text
    assert message in text


def test_missing_empty_and_binary_files(tmp_path: Path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="^data file not found: .*nope.jsonl$"):
        read_jsonl(missing, POLICY_FIELDS)
    for content in (b"", b"\n  \n"):
        empty = tmp_path / "empty.jsonl"
        empty.write_bytes(content)
        with pytest.raises(DataError, match="empty.jsonl: empty data file"):
            read_jsonl(empty, POLICY_FIELDS)
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(GOOD.encode() + b"\n\xff\xfe\n")
    with pytest.raises(DataError, match=r"binary.jsonl:2: invalid JSON \(not UTF-8 text\)"):
        read_jsonl(binary, POLICY_FIELDS)


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)
