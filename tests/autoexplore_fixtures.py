"""Small source trees for the AutoExplore tests (written into pytest tmp folders)."""

from __future__ import annotations

from pathlib import Path

# relative path -> source; classes/functions/constants with unique names, at depths 0, 1 and 2.
TOY_REPO: dict[str, str] = {
    "__init__.py": '"""Toy package for the AutoExplore tests."""\n',
    "core.py": (
        "# Licence header that cat skips.\n"
        "# Second header line.\n"
        '"""Core machinery of the toy package and its registry."""\n'
        "REGISTRY_LIMIT = 12\n\n"
        "class EngineRoom:\n"
        '    """Holds the engines and starts them in order."""\n\n'
        "    def start(self):\n"
        "        return 1\n"
    ),
    "helpers.py": (
        '"""Small helpers used everywhere in the toy package."""\n\n'
        "def normalise_label(text):\n"
        '    """Lower-case a label and strip the surrounding blanks."""\n'
        "    return text.strip().lower()\n"
    ),
    "io/__init__.py": "",
    "io/readers.py": (
        '"""Readers that parse toy files from disk."""\n\n'
        "class CsvReader:\n"
        '    """Parses comma separated rows into dictionaries."""\n'
        "    pass\n"
    ),
    "io/writers.py": (
        "class JsonWriter:\n"
        '    """Serialises toy records as indented JSON documents."""\n'
        "    pass\n"
    ),
    "io/formats/__init__.py": "",
    "io/formats/tables.py": (
        '"""Column layouts of the printed tables in the report."""\n'
        "DEFAULT_COLUMN_WIDTH = 14\n\n"
        "def render_table_grid(rows):\n"
        '    """Draw the rows of a table inside an ASCII grid."""\n'
        "    return rows\n"
    ),
    "models/__init__.py": "",
    "models/forest.py": (
        "class RandomForestModel:\n"
        '    """An ensemble of decision trees voting on each label."""\n'
        "    pass\n"
    ),
}


def write_tree(root: Path, files: dict[str, str] = TOY_REPO) -> Path:
    """Write ``files`` under ``root`` (created) and return ``root``."""
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def toy_tasks() -> list[dict]:
    """Hand-written tasks over :data:`TOY_REPO` (depths 0, 1 and 2)."""
    return [
        {"id": "core", "question": "Which file defines the class EngineRoom?", "targets": ["core.py"], "split": "train"},
        {"id": "csv", "question": "Which file defines the class CsvReader?", "targets": ["io/readers.py"], "split": "train"},
        {"id": "grid", "question": "Which file renders a table grid?", "targets": ["io/formats/tables.py"], "split": "test"},
        {"id": "forest", "question": "Where is RandomForestModel?", "targets": ["models/forest.py"], "split": "val"},
        {"id": "two", "question": "Which file writes JSON or reads CSV?", "targets": ["io/writers.py", "io/readers.py"], "split": "test"},
    ]
