"""A reference row for AutoExplore: a lexical agent that never reads a file, measured in one run.

    python -m benchmarks.autoexplore_lexical [--tasks data/autoexplore/tasks.jsonl] [--split test]

It shows how far the names alone go on the generated benchmark. At every step it scores each
listed ``cd <folder>`` and ``id <file>`` by the character 4-grams its name shares with the
question (words split at ``_`` and camelCase, question boilerplate dropped), enters the best
folder when that beats the best file and otherwise identifies the best file. It plays every task
of the split once, through the env's own observations and valid actions (no privileged facts),
and prints success per depth bucket and question kind. A learned agent that reads only names
should reach about this; beating it needs reading files (``cat``) or knowing the repository.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict

from reflectrl.envs.autoexplore import AutoExploreEnv, stage_of_depth

_BOILERPLATE = frozenset(
    "py the file which class function defines define defined definition find where is of a in that with "
    "what this does module code docstring says constant holds sets assigned declares implemented "
    "implements locate source contains written".split()
)


def name_words(text: str) -> list[str]:
    """Lower-case words of ``text``: split at non-alphanumerics and camelCase, boilerplate dropped."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", text)
    words = re.split(r"[^A-Za-z0-9]+", text.lower())
    return [word for word in words if len(word) > 1 and word not in _BOILERPLATE]


def char_grams(words: list[str], n: int = 4) -> set[str]:
    """Character n-grams of every word, with ``^``/``$`` marking its ends (short words whole)."""
    grams: set[str] = set()
    for word in words:
        marked = f"^{word}$"
        grams |= {marked[i : i + n] for i in range(max(1, len(marked) - n + 1))}
    return grams


def lexical_score(question: str, name: str) -> float:
    """Shared n-grams of question and name, normalised by the square root of the name's count
    (so that long names do not win by size alone); 0 for a name with no words."""
    name_grams = char_grams(name_words(name))
    if not name_grams:
        return 0.0
    return len(char_grams(name_words(question)) & name_grams) / len(name_grams) ** 0.5


def lexical_choice(question: str, valid_actions: list[str]) -> int:
    """Index of the action the lexical agent takes (see the module docstring)."""
    best_file = best_folder = None
    for index, command in enumerate(valid_actions):
        verb, _, name = command.partition(" ")
        if name == ".." or verb not in ("cd", "id"):
            continue
        scored = (lexical_score(question, name), -index)
        if verb == "id" and (best_file is None or scored > best_file):
            best_file = scored
        if verb == "cd" and (best_folder is None or scored > best_folder):
            best_folder = scored
    if best_folder is not None and (best_file is None or best_folder[0] > best_file[0]):
        return -best_folder[1]
    if best_file is not None:
        return -best_file[1]
    return valid_actions.index("cd ..") if "cd .." in valid_actions else 0


def play_split(env: AutoExploreEnv, split: str) -> dict[tuple[str, str], list[bool]]:
    """Success of the lexical agent on every task of ``split``, keyed by (depth bucket, kind)."""
    outcomes: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for index, task in enumerate(env.tasks):
        if task.split != split:
            continue
        _, info = env.reset(seed=index, options={"task": index})
        done = False
        while not done:
            _, _, terminated, truncated, info = env.step(lexical_choice(task.question, info["valid_actions"]))
            done = terminated or truncated
        kind = str((task.about or {}).get("kind", "other"))
        outcomes[(stage_of_depth(task.depth), kind)].append(bool(info["success"]))
    return outcomes


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="data/autoexplore/tasks.jsonl", help="tasks file of `reflectrl generate`")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--visible-files", nargs="*", default=["*.py"], help="as the configs' env_kwargs.visible_files")
    options = parser.parse_args(args)
    env = AutoExploreEnv(tasks_file=options.tasks, visible_files=options.visible_files)
    outcomes = play_split(env, options.split)
    by_bucket: dict[str, list[bool]] = defaultdict(list)
    print(f"lexical agent on the {options.split} split of {options.tasks}")
    print(f"{'bucket':<8} {'kind':<10} {'success':>8} {'tasks':>6}")
    for (bucket, kind), results in sorted(outcomes.items()):
        by_bucket[bucket] += results
        print(f"{bucket:<8} {kind:<10} {sum(results) / len(results):>8.1%} {len(results):>6}")
    for bucket, results in sorted(by_bucket.items()):
        print(f"{bucket:<8} {'all':<10} {sum(results) / len(results):>8.1%} {len(results):>6}")


if __name__ == "__main__":
    main()
