"""Errors that the CLI reports as one line (``reflectrl: error: ...``) with a non-zero exit."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import yaml


class ReflectRLError(RuntimeError):
    """A problem with the user's input or files, described in one line."""


class UsageError(ReflectRLError):
    """A bad command line or config file: exit status 2, as argparse (and ``reflectrl fit``) use."""


def config_file_problem(argv: Sequence[str] | None) -> str | None:
    """Where the first unreadable ``--config`` file of ``argv`` fails to parse, in one line.

    jsonargparse reports a YAML syntax error as "Problems parsing config" without the file
    (and with ``"<unicode string>"`` for the place); this re-reads each file named by
    ``--config FILE`` / ``--config=FILE`` to say which one, at which line and column.
    None when every config file parses (the problem is elsewhere).
    """
    args = list(argv or [])
    files = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--config"]
    files += [arg.split("=", 1)[1] for arg in args if arg.startswith("--config=")]
    for name in files:
        try:
            text = Path(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # jsonargparse's own message (file missing) says enough
        try:
            yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            problem = getattr(error, "problem", None) or " ".join(str(error).split())
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            return f"config file '{name}'{where}: YAML syntax error: {problem}"
    return None


def summarize_parse_error(message: str) -> str:
    """One line naming the offending config key, from jsonargparse's nested multi-line report.

    jsonargparse explains a bad ``model``/``data`` value by walking the Union of subclasses
    (and the ``None`` alternative); the user only needs the key path and the reason.
    """
    path: list[str] = []
    detail = ""
    for raw in message.splitlines():
        line = raw.strip()
        if not line:
            continue
        key = re.match(r'Parser key "([^"]+)":?\s*(.*)', line)
        if key:
            path.append(key.group(1))
            detail = key.group(2)
            if detail:
                break
            continue
        if re.match(r"- Problem with given class_path '([^']+)'", line):
            path.append("init_args")
            continue
        if line.startswith(("Does not validate", "Subtypes:", "Errors:", "Given value", "- Expected a <class 'NoneType'>")):
            continue
        detail = line.lstrip("- ")
        break
    if detail.startswith("Expected a "):
        detail = _expected_values(message) or detail
    unknown = re.match(r"Option '([^']+)' is not accepted", detail)
    if unknown:
        return f"unknown config key '{'.'.join([*path, unknown.group(1)])}'"
    where = f"config key '{'.'.join(path)}': " if path else ""
    return where + (detail or " ".join(message.split()))


def _expected_values(message: str) -> str | None:
    """"got 'bf17'; expected one of 64, 32, ..., null" from a Union whose every alternative is a
    ``Literal`` or None (Lightning's ``precision``), instead of the first alternative's complaint."""
    given = re.search(r"^\s*Given value: (.*)$", message, re.MULTILINE)
    subtypes = re.search(r"^\s*Subtypes: \[(.*)\]$", message, re.MULTILINE)
    if given is None or subtypes is None:
        return None
    choices: list[str] = []
    for kind in re.findall(r"typing\.Literal\[[^\]]*\]|<class '[^']*'>|[^,\s][^,]*", subtypes.group(1)):
        literal = re.fullmatch(r"typing\.Literal\[(.*)\]", kind)
        if literal:
            choices += [choice.strip() for choice in literal.group(1).split(",")]
        elif kind == "<class 'NoneType'>":
            choices.append("null")
        else:
            return None  # a class or a plain type: the first complaint says more
    return f"got {given.group(1).strip()!r}; expected one of {', '.join(dict.fromkeys(choices))}"
