"""The AutoExplore benchmark, built offline from real Python source trees.

:class:`TaskMiner` reads one tree through the same :class:`~reflectrl.envs.sandbox.Sandbox` the
env uses (so every target is a file the agent can see and reach) and asks questions whose answer
is exactly one file, found with :mod:`ast`:

* ``class`` / ``function``: which file defines class ``X`` / function ``f`` (the name is defined,
  at any level, in no other file of the tree);
* ``constant``: which file assigns the module-level constant ``C`` (unique likewise);
* ``docstring``: which file holds the code whose docstring's first sentence is quoted (the
  sentence appears in no other docstring of the tree);
* ``module``: which module's own docstring starts with the quoted sentence (unique likewise).

Each question is phrased with one of several templates, chosen by a stable per-question RNG.

:class:`AutoExploreBenchmark` (a :class:`reflectrl.generate.EnvPreparation`) resolves the
installed source of named packages with :func:`importlib.util.find_spec` at generate time, mines
each, assigns whole packages to the train / val / test splits (no package in two splits) and drops
any task whose target file's content also occurs in another split (no file in two splits even
when packages vendor each other's code). ``reflectrl generate`` then plays the oracle on these
tasks and writes ``tasks.jsonl`` beside the SFT data.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from reflectrl.envs.autoexplore import DEFAULT_HIDDEN, stage_of_depth
from reflectrl.envs.sandbox import DIR, FILE, Sandbox, SandboxError, display_name
from reflectrl.errors import ReflectRLError
from reflectrl.generate import EnvPreparation, Prepared, stable_seed

logger = logging.getLogger("reflectrl.autoexplore")

TASKS_FILE = "tasks.jsonl"
"""Name of the task file written into the generator's ``output_dir``."""

KINDS: tuple[str, ...] = ("class", "function", "constant", "docstring", "module")
"""Question kinds, see the module docstring."""

_TEMPLATES: dict[str, tuple[str, ...]] = {
    "class": (
        "Which file defines the class {name}?",
        "Where is the class {name} defined?",
        "Find the file that declares class {name}.",
        "In which file is class {name} implemented?",
        "Which module contains the definition of {name} (a class)?",
        "Locate the source file of the {name} class.",
    ),
    "function": (
        "Which file defines the function {name}()?",
        "Where is {name}() implemented?",
        "Find the module with the definition of function {name}.",
        "In which file is the function {name} written?",
        "Locate the file where {name}() is defined.",
    ),
    "constant": (
        "Which file sets the constant {name}?",
        "Where is the constant {name} assigned?",
        "Find the file that holds the constant {name}.",
        "In which module is {name} defined as a constant?",
    ),
    "docstring": (
        'Which file has the code documented as "{summary}"?',
        'Find the file with a definition whose docstring says "{summary}"',
        'Where is the code that does this: "{summary}"?',
        'Which file implements what this docstring describes: "{summary}"?',
    ),
    "module": (
        'Which module is described as "{summary}"?',
        'Find the file whose module docstring begins "{summary}"',
        'Which file\'s own documentation starts with "{summary}"?',
    ),
}

_CONSTANT = re.compile(r"^[A-Z][A-Z0-9_]{2,}$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def first_sentence(docstring: str | None, min_chars: int = 20, max_chars: int = 90) -> str | None:
    """The first sentence of a docstring's first paragraph, on one line, or None when it is
    missing, too short, too long or not plain prose (doctest, reST directive, quotes)."""
    if not docstring:
        return None
    paragraph = docstring.strip().split("\n\n")[0]
    text = " ".join(paragraph.split())
    text = _SENTENCE_END.split(text, maxsplit=1)[0].rstrip(".")
    if not min_chars <= len(text) <= max_chars:
        return None
    if any(mark in text for mark in ('"', "`", ">>>", "::", "\\", "{", "}")) or not text.isascii():
        return None
    if not text[0].isalpha():
        return None
    return text


@dataclass
class _FileFacts:
    parts: tuple[str, ...]
    classes: list[tuple[str, str | None]] = field(default_factory=list)  # top level: (name, summary)
    functions: list[tuple[str, str | None]] = field(default_factory=list)  # top level, public
    constants: list[str] = field(default_factory=list)  # module-level UPPER_CASE assignments
    module_summary: str | None = None
    defined: set[str] = field(default_factory=set)  # every class/def name at any level + constants
    summaries: list[str] = field(default_factory=list)  # every docstring summary in the file
    sha256: str = ""


def _file_facts(parts: tuple[str, ...], source: bytes) -> _FileFacts | None:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        # Not Python 3.11 syntax, NUL bytes, or nesting too deep for the parser (a hostile file
        # of a few kB can do that): such a file is never a target, and its names are checked as
        # plain text instead (see TaskMiner._unparsed_counts).
        return None
    facts = _FileFacts(parts, sha256=hashlib.sha256(source).hexdigest())
    facts.module_summary = first_sentence(ast.get_docstring(tree))
    if facts.module_summary:
        facts.summaries.append(facts.module_summary)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            facts.classes.append((node.name, first_sentence(ast.get_docstring(node))))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not node.name.startswith("_"):
            facts.functions.append((node.name, first_sentence(ast.get_docstring(node))))
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and _CONSTANT.match(target.id):
                    facts.constants.append(target.id)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            facts.defined.add(node.name)
            summary = first_sentence(ast.get_docstring(node))
            if summary:
                facts.summaries.append(summary)
    facts.defined.update(facts.constants)
    return facts


@dataclass
class _Scan:
    """What one walk of a tree found: see :meth:`TaskMiner.scan`."""

    files: list[_FileFacts]
    folder_sizes: dict[tuple[str, ...], int]
    unparsed: list[tuple[str, ...]]
    """Visible text files that could not be parsed whole (too large, not Python 3.11, too deep)."""


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _shown(folder: tuple[str, ...]) -> str:
    """A folder as an error message names it: escaped like the env's listing, at most 200 chars."""
    return ("/".join(display_name(name) for name in folder) or ".")[:200]


@dataclass(frozen=True)
class MinedTask:
    """One question with exactly one answer file."""

    question: str
    target: str
    kind: str
    about: dict[str, Any]

    @property
    def depth(self) -> int:
        return self.target.count("/")


class TaskMiner:
    """Mines single-answer questions from one Python source tree (see the module docstring).

    Args:
        hidden: Names never listed (as in the env).
        visible_files: File patterns the env lists (as in the env; default Python sources).
        max_depth: Deepest target folder depth kept (cd steps from the root).
        max_folder_entries: Targets are kept only if every folder on their path lists at most
            this many entries (keeps the observation and the action list short enough for a
            small model's prompt).
        max_file_bytes: Larger files are not parsed (and never targets); their text, like that
            of any other visible file that does not parse, still counts against uniqueness (a
            name or sentence it contains is not asked about), read up to ``max_text_bytes``.
        tasks_per_file: Most questions asked about one file (distinct kinds first).
        max_walk_depth: Deepest folder the miner walks into. Uniqueness needs the whole tree, so
            a deeper folder (or one with more entries than the env scans) is a one-line error
            naming it, never a silent partial walk.
        max_text_bytes: Most bytes of an unparsed file read for the uniqueness check.
    """

    def __init__(
        self,
        hidden: Sequence[str] = DEFAULT_HIDDEN,
        visible_files: Sequence[str] = ("*.py",),
        max_depth: int = 3,
        max_folder_entries: int = 24,
        max_file_bytes: int = 200_000,
        tasks_per_file: int = 2,
        max_walk_depth: int = 64,
        max_text_bytes: int = 4_000_000,
    ) -> None:
        self.hidden = tuple(hidden)
        self.visible_files = tuple(visible_files)
        self.max_depth = int(max_depth)
        self.max_folder_entries = int(max_folder_entries)
        self.max_file_bytes = int(max_file_bytes)
        self.tasks_per_file = int(tasks_per_file)
        self.max_walk_depth = int(max_walk_depth)
        self.max_text_bytes = int(max_text_bytes)

    def _walk(self, sandbox: Sandbox) -> Iterator[tuple[tuple[str, ...], int]]:
        """(file parts, entries of its folder) for every visible regular file; never follows links.

        Raises a one-line ReflectRLError for a folder the walk cannot see whole (deeper than
        ``max_walk_depth``, or with entries the sandbox leaves unscanned): names defined there
        would be unknown, and a question about them could have two answers.
        """
        pending: list[tuple[str, ...]] = [()]
        while pending:
            folder = pending.pop()
            if len(folder) > self.max_walk_depth:
                raise ReflectRLError(
                    f"autoexplore corpus: {sandbox.root}: folder {_shown(folder)} is more than "
                    f"{self.max_walk_depth} levels deep; leave this repository out"
                )
            try:
                entries, left_out = sandbox.list_dir(folder)
            except SandboxError:
                continue
            if left_out:
                raise ReflectRLError(
                    f"autoexplore corpus: {sandbox.root}: folder {_shown(folder)} has more than "
                    f"{sandbox.max_entries} entries; leave this repository out"
                )
            for entry in entries:
                if entry.kind == DIR:
                    pending.append((*folder, entry.name))
                elif entry.kind == FILE:
                    yield (*folder, entry.name), len(entries) + left_out

    def scan(self, root: str) -> _Scan:
        """Facts of every parseable visible file, the entry count of every folder seen, and the
        visible text files that did not parse."""
        sandbox = Sandbox(root, hidden=self.hidden, visible_files=self.visible_files, max_read_bytes=self.max_file_bytes + 1)
        scan = _Scan([], {}, [])
        for parts, entries in sorted(self._walk(sandbox)):
            scan.folder_sizes[parts[:-1]] = entries
            view = sandbox.read_file(parts[:-1], parts[-1])
            if view.status != "text":
                continue  # binary, empty or unreadable: defines nothing an agent could read
            facts = None if view.truncated else _file_facts(parts, view.text.encode("utf-8"))
            if facts is None:
                scan.unparsed.append(parts)
            else:
                scan.files.append(facts)
        # Folders that hold no file still count for the entry limit of deeper targets.
        return scan

    def _unparsed_counts(
        self, root: str, scan: _Scan, names: set[str], sentences: set[str]
    ) -> tuple[Counter[str], Counter[str]]:
        """How many unparsed files contain each candidate name (as a whole word), and each
        candidate sentence.

        One pass, one file at a time, at most ``max_text_bytes`` each, so memory stays bounded.
        """
        name_counts: Counter[str] = Counter()
        sentence_counts: Counter[str] = Counter()
        if not scan.unparsed or not (names or sentences):
            return name_counts, sentence_counts
        reader = Sandbox(root, hidden=self.hidden, visible_files=self.visible_files, max_read_bytes=self.max_text_bytes)
        for parts in scan.unparsed:
            view = reader.read_file(parts[:-1], parts[-1])
            if view.status != "text":
                continue
            name_counts.update(names.intersection(_WORD.findall(view.text)))
            flat = " ".join(view.text.split())
            sentence_counts.update(sentence for sentence in sentences if sentence in flat)
        return name_counts, sentence_counts

    def mine(self, root: str, repo: str, seed: int = 0, scan: _Scan | None = None) -> list[MinedTask]:
        """Single-answer questions about the tree at ``root``, in a deterministic order.

        ``scan`` is :meth:`scan`'s result for ``root`` when the caller already has it.
        """
        scan = self.scan(root) if scan is None else scan
        files, folder_sizes = scan.files, dict(scan.folder_sizes)
        sandbox = Sandbox(root, hidden=self.hidden, visible_files=self.visible_files)
        definers: Counter[str] = Counter()
        summary_count: Counter[str] = Counter()
        for facts in files:
            definers.update(facts.defined)
            summary_count.update(set(facts.summaries))
        # A name or sentence also found in a file that does not parse is not unique either.
        unique_names = {name for name, count in definers.items() if count == 1}
        unique_sentences = {sentence for sentence, count in summary_count.items() if count == 1}
        in_unparsed_names, in_unparsed_sentences = self._unparsed_counts(root, scan, unique_names, unique_sentences)
        definers.update(in_unparsed_names)
        summary_count.update(in_unparsed_sentences)
        tasks: list[MinedTask] = []
        for facts in files:
            depth = len(facts.parts) - 1
            if depth > self.max_depth or not self._small_path(sandbox, facts.parts, folder_sizes):
                continue
            options = self._options(facts, definers, summary_count)
            rng = random.Random(stable_seed(seed, "autoexplore-file", repo, "/".join(facts.parts)))
            rng.shuffle(options)
            # Distinct kinds first, so a file gets e.g. one class and one docstring question.
            chosen, kinds = [], set()
            for option in options:
                if option[0] not in kinds:
                    chosen.append(option)
                    kinds.add(option[0])
            for option in options:
                if option not in chosen:
                    chosen.append(option)
            for kind, about in chosen[: self.tasks_per_file]:
                template = rng.choice(_TEMPLATES[kind])
                question = template.format(name=about.get("name", ""), summary=about.get("summary", ""))
                tasks.append(MinedTask(question, "/".join(facts.parts), kind, about))
        return tasks

    def _small_path(self, sandbox: Sandbox, parts: tuple[str, ...], folder_sizes: dict[tuple[str, ...], int]) -> bool:
        for depth in range(len(parts)):
            folder = parts[:depth]
            if folder not in folder_sizes:
                try:
                    entries, left_out = sandbox.list_dir(folder)
                except SandboxError:
                    return False
                folder_sizes[folder] = len(entries) + left_out
            if folder_sizes[folder] > self.max_folder_entries:
                return False
        return True

    @staticmethod
    def _options(facts: _FileFacts, definers: Counter[str], summary_count: Counter[str]) -> list[tuple[str, dict]]:
        options: list[tuple[str, dict]] = []
        # Names must be ASCII: the env shows a question in ASCII, and two non-ASCII names could
        # then read alike (constants and docstring sentences are ASCII already).
        for name, summary in facts.classes:
            if definers[name] == 1 and len(name) >= 4 and name.isascii():
                options.append(("class", {"kind": "class", "name": name}))
            if summary and summary_count[summary] == 1:
                options.append(("docstring", {"kind": "docstring", "summary": summary, "name": name}))
        for name, summary in facts.functions:
            if definers[name] == 1 and len(name) >= 4 and name.isascii():
                options.append(("function", {"kind": "function", "name": name}))
            if summary and summary_count[summary] == 1:
                options.append(("docstring", {"kind": "docstring", "summary": summary, "name": name}))
        for name in dict.fromkeys(facts.constants):
            if definers[name] == 1:
                options.append(("constant", {"kind": "constant", "name": name}))
        if facts.module_summary and summary_count[facts.module_summary] == 1:
            options.append(("module", {"kind": "module", "summary": facts.module_summary}))
        # Deterministic base order before the per-file shuffle.
        return sorted(options, key=lambda option: json.dumps(option, sort_keys=True))


def package_source(name: str) -> tuple[str, str]:
    """(source folder, distribution version) of an installed package, by import name.

    Raises a one-line ReflectRLError when the package is missing or is a single module.
    """
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError) as error:
        raise ReflectRLError(f"autoexplore corpus: cannot find package {name!r}: {error}") from None
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ReflectRLError(
            f"autoexplore corpus: {name!r} is not an installed package with a source folder (pip install it or drop it)"
        )
    distributions = importlib.metadata.packages_distributions().get(name, [])
    # Prefer the distribution named like the package (lightning_fabric may also ship in another).
    wanted = name.replace("_", "-").lower()
    distributions = sorted(set(distributions), key=lambda d: (d.replace("_", "-").lower() != wanted, d))
    version = "unknown"
    for distribution in distributions:
        try:
            version = f"{distribution} {importlib.metadata.version(distribution)}"
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    return os.path.realpath(locations[0]), version


class AutoExploreBenchmark(EnvPreparation):
    """Builds the AutoExplore task set from installed packages (a ``prepare`` step of generate).

    Args:
        packages: Import names per split, e.g. ``{"train": ["torchmetrics"], "test": ["gymnasium"]}``;
            a package is in one split only.
        roots: Extra source trees per split as ``{"split": {"repo name": "path"}}`` (for tests
            or a custom corpus).
        miner: How questions are mined (limits, kinds per file).
        max_tasks_per_repo: Most tasks kept per repository (a fixed-seed sample, depth buckets
            balanced as far as the repository allows), 0 for all.
        renamed_policy_copies: Replace each training policy record by this many renamed copies
            (0: keep the records as they are); see :func:`renamed_copy`. The training players
            otherwise learn each training state's answer by heart instead of copying the
            command the analysis names, and score val repositories' names near zero.
    """

    def __init__(
        self,
        packages: dict[str, list[str]] | None = None,
        roots: dict[str, dict[str, str]] | None = None,
        miner: TaskMiner | None = None,
        max_tasks_per_repo: int = 0,
        renamed_policy_copies: int = 0,
    ) -> None:
        self.packages = {split: list(names) for split, names in (packages or {}).items()}
        self.renamed_policy_copies = int(renamed_policy_copies)
        if self.renamed_policy_copies < 0:
            raise ReflectRLError(f"autoexplore corpus: renamed_policy_copies must be >= 0, got {renamed_policy_copies}")
        self.roots = {split: dict(trees) for split, trees in (roots or {}).items()}
        self.miner = miner or TaskMiner()
        self.max_tasks_per_repo = int(max_tasks_per_repo)
        for split in [*self.packages, *self.roots]:
            if split not in ("train", "val", "test"):
                raise ReflectRLError(f"autoexplore corpus: unknown split {split!r} (train, val or test)")
        owners: dict[str, str] = {}
        for split, names in [*self.packages.items(), *((s, list(t)) for s, t in self.roots.items())]:
            for name in names:
                if owners.setdefault(name, split) != split:
                    raise ReflectRLError(f"autoexplore corpus: repository {name!r} is in both {owners[name]!r} and {split!r}")
        if not owners:
            raise ReflectRLError("autoexplore corpus: no packages or roots given")

    def __repr__(self) -> str:
        return (
            f"AutoExploreBenchmark(packages={self.packages}, roots={self.roots}, "
            f"max_tasks_per_repo={self.max_tasks_per_repo}, renamed_policy_copies={self.renamed_policy_copies})"
        )

    def augment(self, files: dict[str, list[dict]], seed: int) -> dict[str, list[dict]]:
        """``renamed_policy_copies`` renamed copies in place of each training policy record."""
        if not self.renamed_policy_copies:
            return files
        out = dict(files)
        for name in ("policy_sft.train.jsonl", "policy_sft_positive.train.jsonl"):
            records = files.get(name)
            if not records:
                continue
            pool = sorted({stem for record in records for stem in entry_stems(record)})
            rng = random.Random(stable_seed("renamed copies", name, seed))
            out[name] = [renamed_copy(r, pool, rng) for r in records for _ in range(self.renamed_policy_copies)]
        return out

    def _repos(self) -> list[tuple[str, str, str, str]]:
        """(split, repo name, root, version) for every repository, in a fixed order."""
        repos = []
        for split in ("train", "val", "test"):
            for name in self.packages.get(split, []):
                root, version = package_source(name)
                repos.append((split, name, root, version))
            for name, root in sorted(self.roots.get(split, {}).items()):
                if not os.path.isdir(root):
                    raise ReflectRLError(f"autoexplore corpus: root {root!r} of repository {name!r} is not a folder")
                repos.append((split, name, os.path.realpath(root), "local"))
        seen: dict[str, str] = {}
        for _, name, root, _ in repos:
            for other_root, other in seen.items():
                if root == other_root or root.startswith(other_root + os.sep) or other_root.startswith(root + os.sep):
                    raise ReflectRLError(f"autoexplore corpus: repositories {other!r} and {name!r} overlap ({root})")
            seen[root] = name
        return repos

    def build(self, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """All tasks (dicts for ``AutoExploreEnv(tasks=...)``) and a summary for the manifest."""
        repos = self._repos()
        mined: dict[str, list[MinedTask]] = {}
        hashes_by_split: dict[str, set[str]] = defaultdict(set)
        file_hash: dict[tuple[str, str], str] = {}
        for split, name, root, _ in repos:
            scan = self.miner.scan(root)
            for facts in scan.files:
                file_hash[(name, "/".join(facts.parts))] = facts.sha256
                hashes_by_split[split].add(facts.sha256)
            mined[name] = self.miner.mine(root, name, seed, scan=scan)
        tasks: list[dict[str, Any]] = []
        summary: dict[str, Any] = {"repositories": [], "dropped_shared_files": 0}
        for split, name, root, version in repos:
            other_hashes = set().union(*(h for s, h in hashes_by_split.items() if s != split))
            kept = []
            for task in mined[name]:
                if file_hash.get((name, task.target)) in other_hashes:
                    summary["dropped_shared_files"] += 1
                    continue
                kept.append(task)
            kept = self._sample(kept, name, seed)
            for number, task in enumerate(kept):
                tasks.append(
                    {
                        "id": f"{name}:{number}",
                        "question": task.question,
                        "targets": [task.target],
                        "root": root,
                        "repo": name,
                        "split": split,
                        "depth": task.depth,
                        "kind": task.kind,
                        "about": task.about,
                    }
                )
            depths = Counter(stage_of_depth(task.depth) for task in kept)
            summary["repositories"].append(
                {
                    "repo": name,
                    "split": split,
                    "version": version,
                    "root": root,
                    "tasks": len(kept),
                    "depth1": depths["depth1"],
                    "depth2": depths["depth2"],
                    "files": sum(1 for (repo, _) in file_hash if repo == name),
                }
            )
        for split in ("train", "val", "test"):
            chosen = [t for t in tasks if t["split"] == split]
            summary[split] = {"tasks": len(chosen), **Counter(stage_of_depth(t["depth"]) for t in chosen)}
        return tasks, summary

    def _sample(self, tasks: list[MinedTask], repo: str, seed: int) -> list[MinedTask]:
        if not self.max_tasks_per_repo or len(tasks) <= self.max_tasks_per_repo:
            return tasks
        rng = random.Random(stable_seed(seed, "autoexplore-sample", repo))
        buckets: dict[str, list[MinedTask]] = defaultdict(list)
        for task in tasks:
            buckets[stage_of_depth(task.depth)].append(task)
        for bucket in buckets.values():
            rng.shuffle(bucket)
        chosen: list[MinedTask] = []
        # Round-robin over the depth buckets: balanced where both have enough tasks.
        while len(chosen) < self.max_tasks_per_repo and any(buckets.values()):
            for key in sorted(buckets):
                if buckets[key] and len(chosen) < self.max_tasks_per_repo:
                    chosen.append(buckets[key].pop())
        order = {id(task): i for i, task in enumerate(tasks)}
        return sorted(chosen, key=lambda task: order[id(task)])

    def prepare(self, seed: int) -> Prepared:
        """Build the tasks; the env plays them from memory, ``tasks.jsonl`` goes to ``output_dir``."""
        tasks, summary = self.build(seed)
        if not tasks:
            raise ReflectRLError("autoexplore corpus: no task could be mined from the given repositories")
        text = "".join(json.dumps(task, sort_keys=True) + "\n" for task in tasks)
        return Prepared(env_kwargs={"tasks": tasks, "tasks_file": None}, files={TASKS_FILE: text}, manifest=summary)


# ---------------------------------------------------------------------------------------------
# Renamed copies of policy records (data augmentation)
# ---------------------------------------------------------------------------------------------
_KEPT_STEMS = frozenset({"__init__", ".."})
_LISTING_MARKS = "/@|=#"  # the kinds the observation's listing appends to a name


def entry_stems(record: dict) -> set[str]:
    """Names (".py" left off) of the entries a policy record's listing and actions show."""
    listing = next((line for line in record["observation"].split("\n") if line.startswith("Listing:")), "")
    names = {entry.rstrip(_LISTING_MARKS) for entry in listing.removeprefix("Listing:").split()}
    names |= {parts[1] for parts in (action.split(" ", 1) for action in record["valid_actions"]) if len(parts) == 2}
    stems = {name.removesuffix(".py") for name in names}
    return {stem for stem in stems if stem and stem not in _KEPT_STEMS}


def renamed_copy(record: dict, pool: Sequence[str], rng: random.Random) -> dict:
    """The record with every entry name of its folder replaced by another training name.

    Each name stem (``summary`` for ``summary/``, ``errors`` for ``errors.py``) becomes a distinct
    stem drawn from ``pool``, consistently wherever it stands as a whole word: task, listing,
    history, output, analysis and actions. The analysis still names the right command, but
    which name it is can no longer be learnt from the state alone, so the only way to answer
    is to copy it. ``__init__`` and ``..`` are kept.
    """
    stems = sorted(entry_stems(record), key=lambda stem: (-len(stem), stem))  # longest first wins
    if not stems:
        return dict(record)
    own = set(stems)
    candidates = [stem for stem in pool if stem not in own]
    if len(candidates) < len(stems):
        return dict(record)  # a pool this small (a toy corpus) cannot rename the folder
    mapping = dict(zip(stems, rng.sample(candidates, len(stems)), strict=True))
    pattern = re.compile(r"(?<![A-Za-z0-9])(" + "|".join(map(re.escape, stems)) + r")(?![A-Za-z0-9])")

    def rename(text: str) -> str:
        return pattern.sub(lambda match: mapping[match.group(1)], text)

    copy = dict(record)
    copy["observation"] = rename(record["observation"])
    if record.get("reflection"):
        copy["reflection"] = rename(record["reflection"])
    copy["valid_actions"] = [rename(action) for action in record["valid_actions"]]
    return copy
