"""The lexical reference agent of ``benchmarks.autoexplore_lexical`` (hand-checked scores)."""

from __future__ import annotations

import pytest
from autoexplore_fixtures import write_tree

from benchmarks.autoexplore_lexical import char_grams, lexical_choice, lexical_score, name_words, play_split
from reflectrl.envs.autoexplore import AutoExploreEnv


def test_name_words_split_camel_case_and_drop_boilerplate() -> None:
    assert name_words("Which file defines the class RandomForestModel?") == ["random", "forest", "model"]
    assert name_words("forest.py") == ["forest"]


def test_lexical_score_by_hand() -> None:
    # "^forest$" has the 4-grams ^for, fore, ores, rest, est$; all five are in the question.
    assert char_grams(["forest"]) == {"^for", "fore", "ores", "rest", "est$"}
    assert lexical_score("Where is RandomForestModel?", "forest.py") == pytest.approx(5 / 5**0.5)
    assert lexical_score("Where is RandomForestModel?", "tables.py") == 0.0
    assert lexical_score("anything", "__init__.py") == 0.0  # no words in the name


def test_lexical_choice_prefers_a_matching_folder_then_the_matching_file() -> None:
    question = "Where is RandomForestModel?"
    assert lexical_choice(question, ["cd io", "cd models", "id core.py", "id helpers.py"]) == 1
    assert lexical_choice(question, ["cd ..", "cat forest.py", "id forest.py"]) == 2
    # nothing matches anywhere: the first file listed, never `cat` or `cd ..`
    assert lexical_choice("Which file does nothing?", ["cd ..", "cat a.py", "id a.py", "id b.py"]) == 2


def test_play_split_counts_every_task_once(tmp_path) -> None:
    root = write_tree(tmp_path / "repo")
    tasks = [
        {"id": "forest", "question": "Where is RandomForestModel?", "targets": ["models/forest.py"], "split": "test"},
        {"id": "csv", "question": "Which file defines the class CsvReader?", "targets": ["io/readers.py"], "split": "test"},
        {"id": "engine", "question": "Which file starts the engines?", "targets": ["core.py"], "split": "test"},
        {"id": "train", "question": "Where is RandomForestModel?", "targets": ["models/forest.py"], "split": "train"},
    ]
    env = AutoExploreEnv(root=str(root), tasks=tasks)
    outcomes = play_split(env, "test")
    # forest: cd models (4-grams of "model"), then id forest.py. csv: no folder name matches
    # (io, models, the files), so it identifies a file at the root: wrong. engine: nothing matches.
    assert outcomes == {("depth1", "other"): [True, False, False]}


def test_named_command_is_the_last_command_written() -> None:
    from benchmarks.reflector_commands import named_command, question_of

    assert named_command("X is likely under core/. Step in: cd core") == "cd core"
    assert named_command("cat a.py was wrong. Answer: id b.py") == "id b.py"
    assert named_command("noise without a command") is None
    assert question_of("Task: Where is X?\nFolder: /") == "Where is X?"
