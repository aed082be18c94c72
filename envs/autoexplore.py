"""AutoExplore: answer a question about a code repository by finding the file that answers it.

The agent starts at the repository root and, each step, runs one command from the enumerated
list ``info["valid_actions"]``:

* ``cd ..`` (not at the root) and ``cd <folder>`` for every sub-folder of the current folder,
* ``cat <file>`` (shows the head of the file as the next observation's output),
* ``id <file>`` (identify: answers the question and ends the episode).

``step`` takes an index into that list or a command string (prompted LLM baselines send text),
parsed and checked against the same list; a command that is not in it costs ``error_penalty`` and
changes nothing. All file-system access goes through :class:`~reflectrl.envs.sandbox.Sandbox`
(confined to the root, links never followed, special files never opened, bounded reads, escaped
names). Rewards (before ``reward_scale``): ``step_reward`` per step, ``error_penalty`` more for an
invalid command, ``correct_reward`` for identifying a target file, ``wrong_penalty`` for
identifying another file (which ends the episode, ``crashed``, unless ``dangerous=False``).
Success = a target identified within the horizon.

Example observation (names are display names; output lines start with ``| `` so no file line can
pass for a prompt line)::

    Task: Which file defines the class TaxiEnv?
    Folder: /envs/toy_text
    Listing: __init__.py blackjack.py cliffwalking.py font/ taxi.py
    History: cd envs; cd toy_text; cat blackjack.py
    Output of cat blackjack.py:
    | import os
    | from typing import Optional
    | [...]

Tasks: ``{"question": str, "targets": ["relative/path.py", ...]}`` plus optional ``id``,
``root`` (overrides the env's root; relative to the tasks file's folder), ``split``
(train/val/test; else derived from a hash of each target, which must agree, so a file is
never a target in two hashed splits), ``repo``, ``depth`` (else computed) and ``about`` (facts
about the answer for the teacher, e.g. ``{"kind": "class", "name": "TaxiEnv"}``). Curriculum stages are depth buckets:
``depth1`` (targets at depth 0-1: at most one ``cd``), ``depth2`` (depth 2 and deeper) and ``all``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from .sandbox import DIR, FILE, Entry, FileView, Sandbox, SandboxError, display_name

ENV_ID = "reflectrl/AutoExplore-v0"
"""The id this env is registered under (see ``reflectrl.envs``)."""

STAGES: tuple[str, ...] = ("depth1", "depth2", "all")
"""Curriculum stages (depth buckets), easiest first; ``all`` takes every task."""

SPLITS: tuple[str, ...] = ("train", "val", "test")

DEFAULT_SPLIT_FRACTIONS: tuple[float, float, float] = (0.6, 0.2, 0.2)

EVENTS: tuple[str, ...] = ("moved", "read", "correct", "wrong", "invalid")
"""Values of ``info["event"]``: a ``cd``, a ``cat``, a right or wrong ``id``, an invalid command."""

DEFAULT_HIDDEN: tuple[str, ...] = ("__pycache__", ".*")
"""Names never listed by default (byte-code caches, dot files)."""

# Observation characters: printable ASCII and newlines (file text is reduced to ASCII).
_CHARSET = frozenset(string.printable) - set("\t\r\x0b\x0c")
_ELLIPSIS = "[...]"


def task_depth(target: str) -> int:
    """Folders to enter from the root to reach ``target``: ``a.py`` 0, ``pkg/a.py`` 1."""
    return len(Path(target).parts) - 1


def stage_of_depth(depth: int) -> str:
    """The curriculum stage (depth bucket) of a task whose shallowest target has ``depth``."""
    return "depth1" if depth <= 1 else "depth2"


def _in_stage(stage: str, depth: int) -> bool:
    return stage == "all" or stage_of_depth(depth) == stage


def _hash_unit(*parts: object) -> float:
    """A number in [0, 1) from ``parts`` via SHA-256 (identical in every process)."""
    digest = hashlib.sha256("\x00".join(str(part) for part in parts).encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _split_from_hash(key: str, fractions: tuple[float, float, float]) -> str:
    unit = _hash_unit("reflectrl/AutoExplore:split", key)
    if unit < fractions[0]:
        return "train"
    return "val" if unit < fractions[0] + fractions[1] else "test"


def _check_fractions(split_fractions: Sequence[float]) -> tuple[float, float, float]:
    fractions = tuple(float(f) for f in split_fractions)
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"split_fractions must be 3 non-negative numbers summing to 1, got {split_fractions!r}")
    return fractions  # type: ignore[return-value]


def _target_parts(target: Any, where: str) -> tuple[str, ...]:
    """A target path as its names; relative, no ``.``/``..``, not empty."""
    if not isinstance(target, str) or not target:
        raise ValueError(f"{where}: a target must be a non-empty relative path string, got {target!r}")
    if target.startswith("/") or "\x00" in target:
        raise ValueError(f"{where}: target {target!r} must be a relative path inside the root")
    parts = tuple(part for part in target.split("/") if part)
    if not parts or any(part in (".", "..") for part in parts):
        raise ValueError(f"{where}: target {target!r} must not contain '.' or '..'")
    return parts


class _Task:
    """A validated task (internal)."""

    def __init__(self, raw: dict[str, Any], index: int, root: str, where: str, fractions: tuple[float, float, float]):
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: a task must be a JSON object, got {type(raw).__name__}")
        question = raw.get("question")
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{where}: 'question' must be a non-empty string")
        targets = raw.get("targets")
        if not isinstance(targets, list) or not targets:
            raise ValueError(f"{where}: 'targets' must be a non-empty list of relative file paths")
        self.raw = raw
        self.question = " ".join("".join(c if c.isprintable() else " " for c in question).split())
        self.targets = tuple(_target_parts(t, where) for t in targets)
        self.target_paths = tuple("/".join(parts) for parts in self.targets)
        self.root = root
        self.id = str(raw.get("id", f"task{index}"))
        self.depth = int(raw["depth"]) if "depth" in raw else min(len(p) - 1 for p in self.targets)
        split = raw.get("split")
        if split is not None and split not in SPLITS:
            raise ValueError(f"{where}: 'split' must be one of {SPLITS}, got {split!r}")
        if split is None:
            # Every target's own hash must agree: a file is then never a target in two splits.
            hashed = sorted({_split_from_hash(path, fractions) for path in self.target_paths})
            if len(hashed) > 1:
                raise ValueError(
                    f"{where}: targets fall in different splits by hash ({', '.join(hashed)}); give the task a 'split'"
                )
            split = hashed[0]
        self.split = split
        self.about = raw.get("about") or {}
        self.repo = str(raw.get("repo", ""))


def load_tasks_file(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSONL tasks file (one task object per line; blank lines skipped).

    A relative ``root`` in a task is made absolute against the file's folder. Errors are one
    line naming ``file:line``.
    """
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"AutoExplore tasks file {str(file)!r} does not exist")
    tasks = []
    with file.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                task = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{file}:{number}: malformed JSON ({error.msg} at column {error.colno})") from None
            except RecursionError:
                raise ValueError(f"{file}:{number}: malformed JSON (nested too deeply)") from None
            if not isinstance(task, dict):
                raise ValueError(f"{file}:{number}: a task must be a JSON object, got {type(task).__name__}")
            if isinstance(task.get("root"), str) and not os.path.isabs(task["root"]):
                task = task | {"root": str((file.parent / task["root"]).resolve())}
            task.setdefault("_where", f"{file}:{number}")
            tasks.append(task)
    if not tasks:
        raise ValueError(f"AutoExplore tasks file {str(file)!r} holds no task")
    return tasks


class AutoExploreEnv(gymnasium.Env[str, int]):
    """Navigate a repository and identify the file that answers a question (see the module docstring).

    Every info holds ``valid_actions``, ``stage``, ``split``, ``success``, ``crashed``,
    ``steps``, ``task_id``, ``start_state`` (the task id), ``depth`` and ``repo``; step infos
    also hold ``event`` (one of :data:`EVENTS`) and ``command`` (the command text executed).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        root: str | None = None,
        tasks: list[dict[str, Any]] | None = None,
        tasks_file: str | None = None,
        horizon: int = 15,
        dangerous: bool = True,
        step_reward: float = -1.0,
        error_penalty: float = -5.0,
        correct_reward: float = 20.0,
        wrong_penalty: float = -10.0,
        reward_scale: float = 1.0,
        leave_out: float = 0.0,
        shuffle_actions: bool = False,
        history_length: int = 4,
        max_output_lines: int = 8,
        max_line_chars: int = 72,
        skip_comment_header: bool = True,
        hidden: Sequence[str] = DEFAULT_HIDDEN,
        visible_files: Sequence[str] | None = None,
        max_read_bytes: int = 16384,
        max_entries: int = 2000,
        stage: str = "all",
        split: str | None = None,
        split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
        check_targets: bool = True,
        render_mode: str | None = None,
    ) -> None:
        """Create the env.

        Args:
            root: Repository folder of tasks that name no ``root`` of their own.
            tasks: Task dicts (see the module docstring); exclusive with ``tasks_file``.
            tasks_file: JSONL file of tasks (``reflectrl generate`` writes one).
            horizon: Steps before truncation (the paper: 15).
            dangerous: If True a wrong ``id`` ends the episode (``crashed``); if False it only
                costs ``wrong_penalty`` and the episode goes on (negative examples).
            step_reward: Reward of every step (the paper's cost of 1 per command).
            error_penalty: Added for a command that is not one of the valid actions.
            correct_reward: Added for identifying a target file (success).
            wrong_penalty: Added for identifying any other file.
            reward_scale: Multiplies every reward (e.g. 0.05 puts returns near Taxi's scale).
            leave_out: Probability of hiding each entry that leads to no target (augmentation
                for training); fixed per episode and folder, so a revisited folder looks the same.
            shuffle_actions: List the valid actions in a random order every step (augmentation:
                the policy must read the list, not memorise positions).
            history_length: Past commands shown (0: no history line).
            max_output_lines: Lines of a file shown by ``cat``.
            max_line_chars: Characters per shown line (longer lines are cut).
            skip_comment_header: Skip a leading block of ``#`` comment lines (licence headers)
                in ``cat`` output.
            hidden: ``fnmatch`` patterns of names never listed nor accessible.
            visible_files: If given, only files matching these patterns are listed.
            max_read_bytes: Most bytes read from a file per ``cat`` (bounds time and memory).
            max_entries: Most entries scanned per folder.
            stage: Default stage: ``depth1``, ``depth2`` or ``all``.
            split: Default split of ``reset`` (``train``/``val``/``test``/None for all tasks).
            split_fractions: Shares used for tasks without a ``split`` (hash of the first target).
            check_targets: Check at construction that every target is a reachable regular file.
            render_mode: None or ``ansi``.
        """
        super().__init__()
        if (tasks is None) == (tasks_file is None):
            raise ValueError("AutoExploreEnv needs exactly one of tasks= or tasks_file=")
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if not 0.0 <= leave_out < 1.0:
            raise ValueError(f"leave_out must be in [0, 1), got {leave_out}")
        if history_length < 0 or max_output_lines < 1 or max_line_chars < 8:
            raise ValueError("history_length must be >= 0, max_output_lines >= 1 and max_line_chars >= 8")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.horizon = int(horizon)
        self.dangerous = bool(dangerous)
        self.step_reward = float(step_reward)
        self.error_penalty = float(error_penalty)
        self.correct_reward = float(correct_reward)
        self.wrong_penalty = float(wrong_penalty)
        self.reward_scale = float(reward_scale)
        self.leave_out = float(leave_out)
        self.shuffle_actions = bool(shuffle_actions)
        self.history_length = int(history_length)
        self.max_output_lines = int(max_output_lines)
        self.max_line_chars = int(max_line_chars)
        self.skip_comment_header = bool(skip_comment_header)
        self.stage = stage
        self.split = split
        self.split_fractions = _check_fractions(split_fractions)
        self.render_mode = render_mode
        self._sandbox_options = {
            "hidden": tuple(hidden),
            "visible_files": None if visible_files is None else tuple(visible_files),
            "max_read_bytes": int(max_read_bytes),
            "max_entries": int(max_entries),
        }

        raw_tasks = load_tasks_file(tasks_file) if tasks_file is not None else list(tasks or [])
        if not raw_tasks:
            raise ValueError("AutoExploreEnv got an empty task list")
        self._sandboxes: dict[str, Sandbox] = {}
        self.tasks: list[_Task] = []
        for index, raw in enumerate(raw_tasks):
            where = raw.get("_where", f"task {index}") if isinstance(raw, dict) else f"task {index}"
            task_root = raw.get("root", root) if isinstance(raw, dict) else root
            if task_root is None:
                raise ValueError(f"{where}: no root (pass root= or give the task a 'root')")
            sandbox = self._sandbox(str(task_root), where)
            task = _Task(raw, index, str(task_root), where, self.split_fractions)
            if check_targets:
                for parts in task.targets:
                    if sandbox.entry_kind(parts[:-1], parts[-1]) != FILE or not self._visible_path(sandbox, parts):
                        raise ValueError(
                            f"{where}: target {'/'.join(parts)!r} is not a visible regular file under {sandbox.root}"
                        )
            self.tasks.append(task)

        # The valid actions change every step (info["valid_actions"]); this bounds their number.
        self.action_space = spaces.Discrete(2 * int(max_entries) + 1)
        self.observation_space = spaces.Text(max_length=1_000_000, min_length=1, charset=_CHARSET)

        # Episode state; set by reset().
        self._task: _Task | None = None
        self._episode_stage = stage
        self._folder: tuple[str, ...] = ()
        self._entries: list[Entry] = []
        self._listing_error: str | None = None
        self._left_out = 0
        self._actions: list[str] = []
        self._action_targets: list[tuple[str, str | None]] = []  # (verb, raw name) per action
        self._history: list[str] = []
        self._output: list[str] = []
        self._steps = 0
        self._done = True
        self._success = False
        self._crashed = False
        self._salt = 0
        self._last_event: str | None = None
        self._last_command: str | None = None

    # -------------------------------------------------------------------------- setup
    def _sandbox(self, root: str, where: str) -> Sandbox:
        if root not in self._sandboxes:
            try:
                self._sandboxes[root] = Sandbox(root, **self._sandbox_options)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
        return self._sandboxes[root]

    @staticmethod
    def _visible_path(sandbox: Sandbox, parts: tuple[str, ...]) -> bool:
        """Every name on the path is listed (not hidden) in its folder."""
        for depth in range(len(parts)):
            try:
                entries, _ = sandbox.list_dir(parts[:depth])
            except SandboxError:
                return False
            if not any(entry.name == parts[depth] for entry in entries):
                return False
        return True

    def tasks_of(self, stage: str, split: str | None) -> list[int]:
        """Indices of the tasks of ``stage`` in ``split`` (all splits if None), in file order."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        return [i for i, task in enumerate(self.tasks) if _in_stage(stage, task.depth) and split in (None, task.split)]

    # ---------------------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Start an episode on a task drawn with ``self.np_random`` from the stage and split.

        Options: ``stage``, ``split`` (as the constructor's, for this episode) and ``task`` (an
        index into :attr:`tasks` or a task id; it overrides stage and split).
        """
        super().reset(seed=seed)
        options = dict(options or {})
        stage = options.get("stage") or self.stage
        split = options.get("split", self.split)
        if options.get("task") is not None:
            task = self._task_by_key(options["task"])
        else:
            candidates = self.tasks_of(stage, split)
            if not candidates:
                raise ValueError(f"AutoExplore has no task of stage {stage!r} in split {split!r}")
            task = self.tasks[candidates[int(self.np_random.integers(len(candidates)))]]
        self._task = task
        self._episode_stage = stage
        self._salt = int(self.np_random.integers(2**62))
        self._folder = ()
        self._history = []
        self._output = []
        self._steps = 0
        self._done = False
        self._success = False
        self._crashed = False
        self._last_event = None
        self._last_command = None
        self._refresh()
        return self._observation(), self._info()

    def step(self, action: int | str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Run ``action``: an index into ``info["valid_actions"]`` or a command string."""
        if self._task is None:
            raise RuntimeError("call reset() before step()")
        if self._done:
            raise RuntimeError("the episode is over; call reset()")
        index, error = self.parse_command(action)
        self._steps += 1
        reward = self.step_reward
        terminated = False
        if index is None:
            event = "invalid"
            reward += self.error_penalty
            command = _ascii_line(" ".join(str(action).split()), 60)
            self._output = [_ascii_line(f"Error: {error}", 120)]
        else:
            command = self._actions[index]
            verb, name = self._action_targets[index]
            assert name is not None or verb == "cd"
            if verb == "cd":
                event = "moved"
                self._folder = self._folder[:-1] if name is None else (*self._folder, name)
                self._output = []
            elif verb == "cat":
                event = "read"
                self._output = self._cat_output(command, self._sandbox_now.read_file(self._folder, name))
            else:  # id
                if (*self._folder, name) in self._task.targets:
                    event = "correct"
                    reward += self.correct_reward
                    terminated = self._success = True
                    self._output = [f"{command}: correct, this file answers the task."]
                else:
                    event = "wrong"
                    reward += self.wrong_penalty
                    self._output = [f"{command}: wrong, this file does not answer the task."]
                    if self.dangerous:
                        terminated = self._crashed = True
        self._history.append(command)
        self._last_event = event
        self._last_command = command
        self._refresh()
        truncated = not terminated and self._steps >= self.horizon
        self._done = terminated or truncated
        info = self._info() | {"event": event, "command": command}
        return self._observation(), float(reward * self.reward_scale), terminated, truncated, info

    def render(self) -> str | None:
        """The observation text in ``ansi`` mode, None otherwise."""
        if self.render_mode == "ansi" and self._task is not None:
            return self._observation()
        return None

    # -------------------------------------------------------------------------- commands
    def parse_command(self, action: int | str) -> tuple[int | None, str | None]:
        """``(index, None)`` for a valid action (index or exact command text), else ``(None, why)``.

        Text is matched after collapsing whitespace, with one trailing ``/`` allowed on a ``cd``
        argument; anything else (paths, ``..`` beyond the root, unknown names) is rejected.
        """
        if isinstance(action, str):
            words = action.split()
            if not words:
                return None, "empty command"
            verb, args = words[0], words[1:]
            if verb not in ("cd", "cat", "id"):
                return None, f"unknown command {display_name(verb)[:20]} (use cd, cat or id)"
            if len(args) != 1:
                return None, f"{verb} takes exactly one name of the current folder"
            arg = args[0]
            if verb == "cd" and len(arg) > 1 and arg.endswith("/"):
                arg = arg[:-1]
            text = f"{verb} {arg}"
            if text in self._actions:
                return self._actions.index(text), None
            if "/" in arg and arg != "..":
                return None, "give one name of the current folder, not a path"
            if arg == ".." and not self._folder:
                return None, "already at the root"
            kind = next((entry.kind for entry in self._visible_entries() if entry.display == arg), None)
            if kind is None:
                return None, f"no entry {arg[:40]} in this folder"
            if verb == "cd":
                return None, f"{arg[:40]} is not a folder (it is a {kind})"
            return None, f"{arg[:40]} is not a regular file (it is a {kind})"
        if isinstance(action, bool) or not isinstance(action, (int, np.integer)):
            return None, f"action must be an index or a command string, got {type(action).__name__}"
        index = int(action)
        if not 0 <= index < len(self._actions):
            # Treated like a command that is not in the list (gymnasium's checker samples the
            # whole action_space), not raised.
            return None, f"no action number {index} (there are {len(self._actions)})"
        return index, None

    # ---------------------------------------------------------------------- privileged
    def oracle_actions(self) -> list[int]:
        """Indices of every valid action that starts a shortest command path to a target.

        Distance to a target = ``cd ..`` steps up to the common folder + ``cd`` steps down + the
        final ``id``. Empty after the episode ended with success.
        """
        if self._task is None:
            raise RuntimeError("call reset() first")
        if self._success:
            return []
        best, moves = self._next_moves()
        return sorted(i for i, command in enumerate(self._actions) if command in moves) if best >= 0 else []

    def oracle_plan(self) -> list[str]:
        """One shortest command path (texts) from the current folder to the nearest target."""
        if self._task is None:
            raise RuntimeError("call reset() first")
        if self._success:
            return []
        target = self._nearest_target()
        common = _common_prefix(self._folder, target[:-1])
        ups = ["cd .."] * (len(self._folder) - common)
        downs = [f"cd {display_name(name)}" for name in target[common:-1]]
        return [*ups, *downs, f"id {display_name(target[-1])}"]

    def steps_to_goal(self) -> int:
        """Length of a shortest command path to a target (0 after success)."""
        return 0 if self._success else len(self.oracle_plan())

    negative_actions_only = True
    """For the data generator: teach only the mistakes :meth:`negative_actions` names (another
    non-optimal action may be reading the right file, which is no mistake)."""

    def negative_actions(self) -> list[int]:
        """Indices of ``cat`` actions of files that are not targets (the paper's negative examples:
        reading a wrong sibling file). Used by the data generator, never shown to a player."""
        targets = self._task.targets if self._task else ()
        return [
            i
            for i, (verb, name) in enumerate(self._action_targets)
            if verb == "cat" and (*self._folder, name) not in targets
        ]

    def privileged_facts(self) -> dict[str, Any]:
        """JSON-serialisable facts about the current state, for the oracle and the teacher."""
        if self._task is None:
            raise RuntimeError("call reset() first")
        task = self._task
        target = self._nearest_target()
        plan = self.oracle_plan()
        folder_entries = {entry.name: entry for entry in self._visible_entries()}
        return {
            "env": ENV_ID,
            "stage": self._episode_stage,
            "task_id": task.id,
            "repo": task.repo,
            "question": task.question,
            "about": task.about,
            "targets": ["/".join(display_name(n) for n in parts) for parts in task.targets],
            "target": "/".join(display_name(n) for n in target),
            "target_name": display_name(target[-1]),
            "target_folder": _folder_text(target[:-1]),
            "depth": task.depth,
            "folder": _folder_text(self._folder),
            "target_here": target[:-1] == self._folder and target[-1] in folder_entries,
            "next_action": plan[0] if plan else None,
            "good_actions": [self._actions[i] for i in self.oracle_actions()],
            "steps_to_goal": len(plan),
            "last_command": self._last_command,
            "last_event": self._last_event,
            "success": self._success,
        }

    # ----------------------------------------------------------------------------- state
    @property
    def _sandbox_now(self) -> Sandbox:
        assert self._task is not None
        return self._sandboxes[self._task.root]

    def _task_by_key(self, key: Any) -> _Task:
        if isinstance(key, int) and not isinstance(key, bool):
            if not 0 <= key < len(self.tasks):
                raise ValueError(f"task index must be in [0, {len(self.tasks)}), got {key}")
            return self.tasks[key]
        for task in self.tasks:
            if task.id == str(key):
                return task
        raise ValueError(f"no task with id {key!r}")

    def _nearest_target(self) -> tuple[str, ...]:
        assert self._task is not None

        def distance(parts: tuple[str, ...]) -> tuple[int, tuple[str, ...]]:
            common = _common_prefix(self._folder, parts[:-1])
            return (len(self._folder) - common) + (len(parts) - 1 - common) + 1, parts

        return min(self._task.targets, key=distance)

    def _next_moves(self) -> tuple[int, set[str]]:
        """(shortest distance, first commands of every shortest path); (-1, {}) if none."""
        assert self._task is not None
        best, moves = -1, set()
        for parts in self._task.targets:
            common = _common_prefix(self._folder, parts[:-1])
            ups = len(self._folder) - common
            distance = ups + (len(parts) - 1 - common) + 1
            if ups:
                move = "cd .."
            elif common < len(parts) - 1:
                move = f"cd {display_name(parts[common])}"
            else:
                move = f"id {display_name(parts[-1])}"
            if best < 0 or distance < best:
                best, moves = distance, {move}
            elif distance == best:
                moves.add(move)
        return best, moves

    def _refresh(self) -> None:
        """Re-list the current folder and rebuild the valid actions."""
        try:
            entries, self._left_out = self._sandbox_now.list_dir(self._folder)
            self._listing_error = None
        except SandboxError as error:
            entries, self._left_out, self._listing_error = [], 0, str(error)
        self._entries = [entry for entry in entries if not self._left_out_entry(entry)]
        actions: list[tuple[str, str | None]] = []
        if self._folder:
            actions.append(("cd", None))
        actions += [("cd", e.name) for e in self._entries if e.kind == DIR]
        actions += [("cat", e.name) for e in self._entries if e.kind == FILE]
        actions += [("id", e.name) for e in self._entries if e.kind == FILE]
        if self.shuffle_actions:
            rng = random.Random(f"{self._salt}/{self._steps}")
            rng.shuffle(actions)
        self._action_targets = actions
        self._actions = [f"{verb} {'..' if name is None else display_name(name)}" for verb, name in actions]

    def _visible_entries(self) -> list[Entry]:
        return self._entries

    def _left_out_entry(self, entry: Entry) -> bool:
        """Leave-out augmentation: hide entries that lead to no target, per episode and folder."""
        if self.leave_out <= 0.0 or self._task is None:
            return False
        path = (*self._folder, entry.name)
        if any(parts[: len(path)] == path for parts in self._task.targets):
            return False  # on the way to (or being) a target: never hidden
        return _hash_unit(self._salt, "/".join(path)) < self.leave_out

    def _cat_output(self, command: str, view: FileView) -> list[str]:
        if view.status == "error":
            return [f"{command}: {view.text}"]
        if view.status == "binary":
            return [f"{command}: binary file ({view.size} bytes), not shown"]
        if view.status == "empty":
            return [f"{command}: empty file"]
        lines = view.text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        if view.truncated and lines:
            lines = lines[:-1]  # the last line read may be cut in the middle
        shown: list[str] = []
        in_header = self.skip_comment_header
        for line in lines:
            stripped = line.strip()
            if in_header and (not stripped or stripped.startswith("#")) and not stripped.startswith("#!"):
                continue
            in_header = False
            if not stripped:
                continue  # blank lines carry nothing and cost tokens
            shown.append("| " + _ascii_line(line.rstrip(), self.max_line_chars))
            if len(shown) > self.max_output_lines:
                break
        if not shown:
            return [f"{command}: only comments and blank lines"]
        more = len(shown) > self.max_output_lines or view.truncated
        return [f"Output of {command}:", *shown[: self.max_output_lines], *(["| " + _ELLIPSIS] if more else [])]

    def _observation(self) -> str:
        assert self._task is not None
        listing = " ".join(entry.listed for entry in self._entries) or "(empty)"
        if self._listing_error:
            listing = f"({self._listing_error})"
        elif self._left_out:
            listing += f" (+{self._left_out} more not scanned)"
        lines = [
            f"Task: {_ascii_line(self._task.question, 400)}",
            f"Folder: {_folder_text(self._folder)}",
            f"Listing: {listing}",
        ]
        if self.history_length:
            recent = self._history[-self.history_length :]
            lines.append("History: " + ("; ".join(recent) if recent else "none"))
        lines += self._output
        return "\n".join(lines)

    def _info(self) -> dict[str, Any]:
        assert self._task is not None
        return {
            "valid_actions": list(self._actions),
            "stage": self._episode_stage,
            "split": self._task.split,
            "success": self._success,
            "crashed": self._crashed,
            "steps": self._steps,
            "task_id": self._task.id,
            "start_state": self._task.id,
            "depth": self._task.depth,
            "repo": self._task.repo,
        }


def _common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


def _folder_text(folder: Sequence[str]) -> str:
    return "/" + "/".join(display_name(name) for name in folder)


def _ascii_line(text: str, limit: int) -> str:
    """One printable-ASCII line of at most ``limit`` characters (tabs expanded, others as ``?``)."""
    text = text.expandtabs(4)
    cleaned = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - len(_ELLIPSIS)] + _ELLIPSIS
