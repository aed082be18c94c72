"""JSONL datasets: atomic writing and validated reading.

Every problem with a data file is reported as a one-line :class:`DataError` naming the file and
line (``data/taxi/policy_sft.train.jsonl:12: key 'action' must be int, got str``), so a broken
or hand-edited dataset fails at load time with a message that says where to look, not deep
inside a training step.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

FieldType = type | tuple[type, ...]

REFLECTION_FIELDS: dict[str, FieldType] = {
    "env": str,
    "split": str,
    "seed": int,
    "stage": str,
    "step": int,
    "observation": str,
    "reflection": str,
    "negative": bool,
}
"""Schema of ``reflection_sft*`` records."""

POLICY_FIELDS: dict[str, FieldType] = {
    **REFLECTION_FIELDS,
    "valid_actions": list,
    "action": int,
    "optimal_actions": list,
}
"""Schema of ``policy_sft*`` records: a reflection record plus the action list and labels."""

PLAIN_FIELDS: dict[str, FieldType] = {**POLICY_FIELDS, "reflection": type(None)}
"""Schema of ``plain_sft`` records: as policy records, with ``"reflection": null``."""

_TYPE_NAMES = {
    type(None): "null",
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    list: "list",
    dict: "dict",
}


class DataError(ValueError):
    """A data file is missing or malformed; the message is one line naming file and line."""


def _type_name(kind: type) -> str:
    return _TYPE_NAMES.get(kind, kind.__name__)


def _matches(value: Any, expected: FieldType) -> bool:
    """isinstance, except that a bool is not accepted as an int (JSON true is not 1)."""
    kinds = expected if isinstance(expected, tuple) else (expected,)
    for kind in kinds:
        if kind is int and isinstance(value, bool):
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return True  # JSON does not distinguish 1 from 1.0
        if isinstance(value, kind):
            return True
    return False


def write_jsonl(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> int:
    """Write ``records`` one JSON object per line; returns the number of records.

    Atomic: written to a temporary file in the same folder and moved over ``path`` with
    ``os.replace``, so an interrupted write never leaves a half file over a good one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        "w",
        encoding="utf-8",
        newline="\n",
        dir=target.parent,
        prefix=f".{target.name}.",
        suffix=".tmp",
        delete=False,
    )
    count = 0
    try:
        with handle:
            for record in records:
                # allow_nan=False: NaN/Infinity are not JSON and other readers reject them.
                handle.write(json.dumps(dict(record), ensure_ascii=False, allow_nan=False) + "\n")
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        # NamedTemporaryFile creates the file private (0600); use a normal file's permissions.
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(handle.name, 0o666 & ~mask)
        os.replace(handle.name, target)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return count


def validate_record(record: Any, required: Mapping[str, FieldType], where: str) -> None:
    """Check one parsed record against ``required``; raise DataError prefixed with ``where``."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: record must be a JSON object, got {_type_name(type(record))}")
    for key, expected in required.items():
        if key not in record:
            raise DataError(f"{where}: missing key {key!r}")
        value = record[key]
        if not _matches(value, expected):
            kinds = expected if isinstance(expected, tuple) else (expected,)
            wanted = " or ".join(_type_name(kind) for kind in kinds)
            raise DataError(f"{where}: key {key!r} must be {wanted}, got {_type_name(type(value))}")
    # Cross-field checks of the action lists, when the schema has them.
    if "valid_actions" in required:
        actions = record["valid_actions"]
        if not actions or not all(isinstance(a, str) for a in actions):
            raise DataError(f"{where}: key 'valid_actions' must be a non-empty list of str")
        for key in ("action", "optimal_actions"):
            if key not in required:
                continue
            indices = record[key] if isinstance(record[key], list) else [record[key]]
            for index in indices:
                if not _matches(index, int) or not 0 <= index < len(actions):
                    raise DataError(
                        f"{where}: key {key!r} has index {index!r} out of range of "
                        f"{len(actions)} valid_actions"
                    )


def read_jsonl(path: str | os.PathLike[str], required: Mapping[str, FieldType]) -> list[dict[str, Any]]:
    """Read and validate a JSONL file; every record must have the ``required`` keys and types.

    Raises DataError (one line, naming file and line) for a missing or empty file, invalid JSON,
    a non-object record, a missing key, a wrong type, or an action index out of range.
    Blank lines are skipped.
    """
    source = Path(path)
    if not source.is_file():
        raise DataError(f"data file not found: {source}")
    records: list[dict[str, Any]] = []
    # Read bytes and decode line by line so that even a decoding error names its line.
    with source.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{source}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{where}: invalid JSON (not UTF-8 text)") from None
            if not line.strip():
                continue
            text = line.rstrip("\r\n")  # else a truncated record's error points at "line 2 column 1"
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                place = "at the end of the line: truncated?" if error.pos >= len(text) else f"at column {error.pos + 1}"
                raise DataError(f"{where}: invalid JSON ({error.msg} {place})") from None
            except RecursionError:
                raise DataError(f"{where}: invalid JSON (nested too deeply)") from None
            validate_record(record, required, where)
            records.append(record)
    if not records:
        raise DataError(f"{source}: empty data file (no records)")
    return records
