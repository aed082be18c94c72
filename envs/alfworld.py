"""ALFWorld: household tasks in TextWorld (the ``alfworld`` package, an optional extra).

Each episode is one ALFWorld game (a ``game.tw-pddl`` file beside its ``traj_data.json``): the
agent reads its task ("put some tomato in microwave"), the receptacles of the room, and the
history of its commands with their feedback, and picks one of the **admissible commands**
(``info["valid_actions"]``). Reward ``success_reward`` (1) when the goal holds, which ends the
episode; ``horizon`` steps truncate it. Example observation::

    Task: heat some tomato and put it in countertop.
    Room: you see a cabinet 1, a countertop 1, a fridge 1, a microwave 1, and a sinkbasin 1.
    Earlier: go to fridge 1; open fridge 1
    > go to countertop 1
    You arrive at countertop 1. On the countertop 1, you see a tomato 1.
    > take tomato 1 from countertop 1
    You pick up the tomato 1 from the countertop 1.
    At: countertop 1. Holding: tomato 1.

**Games.** ``data_root`` holds one folder per split, as the published data
(``$ALFWORLD_DATA/json_2.1.1/{train,valid_seen,valid_unseen}``, fetched by ``alfworld-download``)
and the generated games (``reflectrl generate --config configs/alfworld_data.yaml``) both do.
Games are found with upstream's rules (``AlfredTWEnv.collect_game_files``): a folder with
``traj_data.json`` and ``game.tw-pddl`` marked ``"solvable": true``, no ``movable``/``Sliced`` in
its path, its ``task_type`` among the selected ones. Splits: ``train``, ``valid_seen``
(in-distribution: rooms seen in training) and ``valid_unseen`` (out-of-distribution: new rooms);
the env API's ``val`` and ``test`` are aliases of the last two. Stages: ``all`` or one task type
(a curriculum can go family by family).

**Upstream pitfalls handled here** (alfworld 0.4.2, textworld 1.7.0):

* no matching game: upstream's reset cycles over an empty list forever; here construction and
  ``reset`` raise a one-line ``ValueError`` naming the folder and the filter;
* ``AlfredTWEnv.init_env`` passes ``expert_type`` positionally (it lands in ``env``), so the
  planner expert is silently replaced by the handcoded one; the handcoded expert is wrapped here
  with ``AlfredExpert(expert_type=...)`` and the planner is asked directly, only when the oracle
  is consulted (a replan costs 0.05-0.5 s; RL rollouts never pay it);
* fast-downward's PDDL translator overwrites ``sys.argv``: it is restored after every load;
* a game whose goal cannot be reached crashes the translator with ``KeyError: 'val1'``: reported
  as a one-line error naming the game file;
* games are read, never written: nothing goes into ``data_root`` (the asynchronous, forking
  ``AlfredTWEnv`` is not used; every env plays in-process).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

ENV_ID = "reflectrl/ALFWorld-v0"
"""The id this env is registered under (see ``reflectrl.envs``)."""

TASK_TYPES: tuple[str, ...] = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
"""The six ALFWorld task families (upstream's ``TASK_TYPES``)."""

STAGES: tuple[str, ...] = ("all", *TASK_TYPES)
"""``all`` or one task family; :func:`check_stage` also takes ``{task_type}-{Object}-{Receptacle}``."""

PAPER_STAGE = "pick_and_place_simple-Tomato-Microwave"
"""The paper's single ALFWorld family (put a tomato in the microwave), as a stage."""

SPLIT_FOLDERS: dict[str, str] = {
    "train": "train",
    "valid_seen": "valid_seen",
    "valid_unseen": "valid_unseen",
    "val": "valid_seen",
    "test": "valid_unseen",
}
"""Split name -> folder under ``data_root`` (``val``/``test``: the env API's names)."""

DATA_SUBFOLDER = "json_2.1.1"
"""The published games' folder under ``$ALFWORLD_DATA`` (written by ``alfworld-download``)."""

EXPERTS: tuple[str, ...] = ("planner", "search", "handcoded")

TOOL_OF_TASK: dict[str, str] = {
    "pick_clean_then_place_in_recep": "SinkBasin",
    "pick_heat_then_place_in_recep": "Microwave",
    "pick_cool_then_place_in_recep": "Fridge",
}
"""The receptacle type (ALFWorld's name) a treatment task needs besides its goal: known from the
task alone, and every generated room of the family has one."""

INSTALL_HINT = "install the optional extra: pip install -e '.[alfworld]'"

_CHARSET = frozenset(chr(c) for c in range(32, 127)) | {"\n"}


def default_data_root() -> Path:
    """``$ALFWORLD_DATA/json_2.1.1`` (upstream's default ``$ALFWORLD_DATA`` is ``~/.cache/alfworld``)."""
    base = os.environ.get("ALFWORLD_DATA") or os.path.expanduser("~/.cache/alfworld")
    return Path(base) / DATA_SUBFOLDER


def require_alfworld() -> Any:
    """Import alfworld's text-engine pieces lazily (reflectrl works without the extra).

    ``import alfworld`` creates ``$ALFWORLD_DATA`` (default ``~/.cache/alfworld``) as a side
    effect; nothing else is written.
    """
    try:
        import textworld
        from alfworld.agents.environment import alfred_tw_env
        from textworld.envs.pddl import PddlEnv
    except ImportError as error:
        raise ImportError(f"ALFWorld needs the alfworld package ({error}); {INSTALL_HINT}") from None
    return textworld, alfred_tw_env, PddlEnv


@contextlib.contextmanager
def preserved_argv() -> Iterator[None]:
    """Restore ``sys.argv``: fast-downward's translator replaces it on every game load."""
    saved = list(sys.argv)
    try:
        yield
    finally:
        sys.argv[:] = saved


@contextlib.contextmanager
def private_random(state: list[Any]) -> Iterator[None]:
    """Run code that calls the global ``random`` (the handcoded expert) on a private state.

    ``state`` is a one-element list holding the private ``random`` state; it is updated, and the
    global state is restored afterwards (so episodes are deterministic and nothing else shifts).
    """
    saved = random.getstate()
    random.setstate(state[0])
    try:
        yield
    finally:
        state[0] = random.getstate()
        random.setstate(saved)


@dataclass(frozen=True)
class GameInfo:
    """One playable game found under ``data_root``."""

    path: str
    """Absolute path of its ``game.tw-pddl``."""
    key: str
    """Its folder relative to ``data_root`` (identifies the game; differs across splits)."""
    split_folder: str
    task_type: str
    object_target: str
    parent_target: str
    toggle_target: str
    mrecep_target: str


def _read_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:  # closed: PddlEnv.load leaks its handle
        return json.load(handle)


@functools.lru_cache(maxsize=64)
def _scan_split(folder: str, mtime_ns: int) -> tuple[GameInfo, ...]:
    """Every solvable game of one split folder, in path order (cached per folder and mtime)."""
    del mtime_ns  # part of the cache key only: a regenerated folder is scanned again
    root = Path(folder)
    games: list[GameInfo] = []
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        if "traj_data.json" not in files or "game.tw-pddl" not in files:
            continue
        relative = os.path.relpath(directory, root.parent)
        if "movable" in relative or "Sliced" in relative:
            continue  # upstream skips these too (no text-engine support)
        try:
            traj = _read_json(Path(directory) / "traj_data.json")
            params = traj.get("pddl_params") or {}
            with open(Path(directory) / "game.tw-pddl", encoding="utf-8") as handle:
                # The flag sits at the end of a large JSON text; parsing it is the only safe read.
                solvable = json.load(handle).get("solvable") is True
        except (OSError, ValueError, AttributeError) as error:
            raise ValueError(f"unreadable ALFWorld game in {directory}: {error}") from None
        if not solvable:
            continue
        games.append(
            GameInfo(
                path=str(Path(directory, "game.tw-pddl").resolve()),
                key=relative.replace(os.sep, "/"),
                split_folder=root.name,
                task_type=str(traj.get("task_type", "")),
                object_target=str(params.get("object_target", "")),
                parent_target=str(params.get("parent_target", "")),
                toggle_target=str(params.get("toggle_target", "")),
                mrecep_target=str(params.get("mrecep_target", "")),
            )
        )
    games.sort(key=lambda game: game.key)
    return tuple(games)


def find_games(data_root: str | os.PathLike[str], split: str) -> tuple[GameInfo, ...]:
    """The solvable games of ``split`` under ``data_root`` (empty if the split folder is missing)."""
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"ALFWorld split must be one of {tuple(SPLIT_FOLDERS)}, got {split!r}")
    folder = Path(data_root) / SPLIT_FOLDERS[split]
    if not folder.is_dir():
        return ()
    return _scan_split(str(folder.resolve()), folder.stat().st_mtime_ns)


def check_stage(stage: str) -> tuple[str, str | None, str | None]:
    """``(task type or "all", object type, receptacle type)`` of a stage name.

    A stage is ``all``, a task type, or ``{task_type}-{Object}-{Receptacle}`` (one goal family,
    e.g. :data:`PAPER_STAGE`; the receptacle of ``look_at_obj_in_light`` is its lamp).
    """
    parts = str(stage).split("-")
    if len(parts) == 1 and parts[0] in STAGES:
        return parts[0], None, None
    if len(parts) == 3 and parts[0] in TASK_TYPES and parts[1] and parts[2]:
        return parts[0], parts[1].lower(), parts[2].lower()
    raise ValueError(f"stage must be one of {STAGES} or '{{task_type}}-{{Object}}-{{Receptacle}}', got {stage!r}")


def _lower_set(values: Sequence[str] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(str(v).lower() for v in values)


class ALFWorldEnv(gymnasium.Env[str, int]):
    """One ALFWorld game per episode, played through TextWorld's PDDL engine (see the module docstring).

    Every info holds ``valid_actions``, ``stage``, ``split``, ``success``, ``crashed``, ``steps``,
    ``task_type``, ``task``, ``game`` and ``start_state`` (the game key); step infos also hold
    ``event`` (the command's verb, or ``invalid``) and ``command``.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        data_root: str | None = None,
        task_types: Sequence[str] | None = None,
        objects: Sequence[str] | None = None,
        receptacles: Sequence[str] | None = None,
        horizon: int = 30,
        dangerous: bool = True,
        expert: str = "planner",
        success_reward: float = 1.0,
        step_reward: float = 0.0,
        invalid_penalty: float = 0.0,
        history_length: int = 3,
        max_earlier_commands: int = 10,
        stage: str = "all",
        split: str | None = None,
        render_mode: str | None = None,
    ) -> None:
        """Create the env (games are found now; alfworld is imported now, the engine at first reset).

        Args:
            data_root: Folder holding ``train``/``valid_seen``/``valid_unseen`` game folders
                (default: ``$ALFWORLD_DATA/json_2.1.1``, where ``alfworld-download`` puts them).
            task_types: Task families to play (default: all six).
            objects: Only games whose target object type is one of these (e.g. ``[Tomato]``).
            receptacles: Only games whose target receptacle type (or lamp) is one of these
                (e.g. ``[Microwave]``; the paper's family is ``pick_and_place_simple`` + Tomato
                + Microwave).
            horizon: Steps before truncation.
            dangerous: If True a command that is not admissible (only possible as text) ends
                the episode (``crashed``); if False it does nothing ("Nothing happens.").
            expert: ``planner`` (fast-downward, optimal plans, replans from any state; it knows
                where every object hides), ``search`` (the planner, except that it never goes
                to a place it could not know: while the planner's next ``go to`` leads into a
                receptacle not seen inside yet and not of a type the task names, it opens the
                closed receptacle it stands at or goes to the first unseen one, in the order of
                the valid actions, that can contain what the task needs) or ``handcoded``
                (upstream's heuristic explorer; it fails on two-object games).
            success_reward: Reward when the goal holds (the episode ends).
            step_reward: Added every step (0: the sparse reward of ALFWorld).
            invalid_penalty: Added for a command that is not admissible.
            history_length: Past steps shown with their feedback.
            max_earlier_commands: Older commands shown (without feedback) on the ``Earlier`` line.
            stage: Default stage: ``all`` or a task type.
            split: Default split (``train``, ``valid_seen``/``val``, ``valid_unseen``/``test``)
                or None for all splits.
            render_mode: None or ``ansi``.
        """
        super().__init__()
        check_stage(stage)
        if split is not None and split not in SPLIT_FOLDERS:
            raise ValueError(f"split must be one of {tuple(SPLIT_FOLDERS)} or None, got {split!r}")
        if expert not in EXPERTS:
            raise ValueError(f"expert must be one of {EXPERTS}, got {expert!r}")
        if horizon < 1 or history_length < 0 or max_earlier_commands < 0:
            raise ValueError("horizon must be >= 1, history_length and max_earlier_commands >= 0")
        unknown = sorted(set(task_types or ()) - set(TASK_TYPES))
        if unknown:
            raise ValueError(f"unknown ALFWorld task types {unknown}; known: {list(TASK_TYPES)}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        require_alfworld()  # fail at construction, with the install hint, not at the first reset
        self.data_root = Path(data_root) if data_root is not None else default_data_root()
        if not self.data_root.is_dir():
            raise ValueError(
                f"ALFWorld data folder {str(self.data_root)!r} does not exist: run alfworld-download (the "
                "published games) or reflectrl generate --config configs/alfworld_data.yaml (generated games)"
            )
        self.task_types = tuple(task_types) if task_types else TASK_TYPES
        self.objects = _lower_set(objects)
        self.receptacles = _lower_set(receptacles)
        self.horizon = int(horizon)
        self.dangerous = bool(dangerous)
        self.expert = expert
        self.success_reward = float(success_reward)
        self.step_reward = float(step_reward)
        self.invalid_penalty = float(invalid_penalty)
        self.history_length = int(history_length)
        self.max_earlier_commands = int(max_earlier_commands)
        self.stage = stage
        self.split = split
        self.render_mode = render_mode
        if not any(self.games_of("all", name) for name in ("train", "valid_seen", "valid_unseen")):
            raise ValueError(f"ALFWorld has no game under {str(self.data_root)!r} matching {self._filter_text()}")

        # Admissible commands change every step; this bounds their number (real rooms: < 200).
        self.action_space = spaces.Discrete(1024)
        self.observation_space = spaces.Text(max_length=100_000, min_length=1, charset=_CHARSET)

        self._engine: Any = None  # the wrapped TextWorld env, built at the first reset
        self._pddl: Any = None  # the innermost PddlEnv (for the planner)
        self._game: GameInfo | None = None
        self._loaded_path: str | None = None
        self._state: Any = None
        self._expert_random: list[Any] = [random.Random(0).getstate()]
        self._reset_episode_state()

    def _reset_episode_state(self) -> None:
        self._episode_stage = self.stage
        self._episode_split: str | None = self.split
        self._task = ""
        self._room = ""
        self._history: list[tuple[str, str]] = []
        self._actions: list[str] = []
        self._steps = 0
        self._done = True
        self._success = False
        self._crashed = False
        self._last_event: str | None = None
        self._last_command: str | None = None
        self._plan_cache: list[str] | None = None
        self._searching = False
        # Receptacles whose inside the agent has seen (visited, and opened if it opens): what a
        # searching expert may know without privileged facts.
        self._observed: set[str] = set()

    # -------------------------------------------------------------------------- games
    def _filter_text(self) -> str:
        parts = [f"task types {list(self.task_types)}"]
        if self.objects is not None:
            parts.append(f"objects {sorted(self.objects)}")
        if self.receptacles is not None:
            parts.append(f"receptacles {sorted(self.receptacles)}")
        return ", ".join(parts)

    def _matches(self, game: GameInfo, stage: tuple[str, str | None, str | None]) -> bool:
        task_type, object_type, receptacle_type = stage
        if game.task_type not in self.task_types or (task_type != "all" and game.task_type != task_type):
            return False
        target = game.object_target.lower()
        receptacle = (game.toggle_target if game.task_type == "look_at_obj_in_light" else game.parent_target).lower()
        if (self.objects is not None and target not in self.objects) or object_type not in (None, target):
            return False
        return (self.receptacles is None or receptacle in self.receptacles) and receptacle_type in (None, receptacle)

    def games_of(self, stage: str, split: str | None) -> list[GameInfo]:
        """The games of ``stage`` in ``split`` (every split if None), in path order."""
        parsed = check_stage(stage)
        splits = ["train", "valid_seen", "valid_unseen"] if split is None else [split]
        return [game for name in splits for game in find_games(self.data_root, name) if self._matches(game, parsed)]

    # ---------------------------------------------------------------------------- engine
    def _build_engine(self) -> None:
        textworld, alfred, pddl_env_class = require_alfworld()
        infos = textworld.EnvInfos(won=True, admissible_commands=True, facts=True, extras=["gamefile"])
        self._pddl = pddl_env_class(infos)
        engine = alfred.AlfredInfos(alfred.AlfredDemangler(self._pddl))
        if self.expert == "handcoded":
            # By keyword: upstream's init_env passes it positionally and always gets 'handcoded'.
            engine = alfred.AlfredExpert(engine, expert_type=alfred.AlfredExpertType.HANDCODED)
        self._engine = engine

    def _load(self, game: GameInfo) -> Any:
        """Load (when another game) and reset the engine; returns the initial game state."""
        if self._engine is None:
            self._build_engine()
        try:
            with preserved_argv(), private_random(self._expert_random):
                if self._loaded_path != game.path:
                    self._loaded_path = None
                    self._engine.load(game.path)
                    self._loaded_path = game.path
                return self._engine.reset()
        except KeyError as error:
            # fast-downward's translator returns a dummy task for a goal it proves unreachable.
            raise ValueError(
                f"ALFWorld game {game.path} is unsolvable (PDDL translation failed: KeyError {error}); "
                "check its goal against canContain"
            ) from None

    # ---------------------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Start an episode on a game drawn with ``self.np_random`` from the stage and split.

        Options: ``stage``, ``split`` (as the constructor's, for this episode) and ``game`` (an
        index into :meth:`games_of` of that stage and split, or a game key).
        """
        super().reset(seed=seed)
        options = dict(options or {})
        stage = options.get("stage") or self.stage
        split = options.get("split", self.split)
        if split is not None and split not in SPLIT_FOLDERS:
            raise ValueError(f"split must be one of {tuple(SPLIT_FOLDERS)} or None, got {split!r}")
        candidates = self.games_of(stage, split)
        if not candidates:
            raise ValueError(
                f"ALFWorld has no game of stage {stage!r} in split {split!r} under {str(self.data_root)!r} "
                f"({self._filter_text()})"
            )
        chosen = options.get("game")
        if chosen is None:
            game = candidates[int(self.np_random.integers(len(candidates)))]
        elif isinstance(chosen, int | np.integer) and not isinstance(chosen, bool):
            game = candidates[int(chosen) % len(candidates)]
        else:
            matching = [g for g in candidates if g.key == str(chosen)]
            if not matching:
                raise ValueError(f"no ALFWorld game {chosen!r} in stage {stage!r}, split {split!r}")
            game = matching[0]
        self._reset_episode_state()
        self._expert_random = [random.Random(int(self.np_random.integers(2**62))).getstate()]
        state = self._load(game)
        self._game = game
        self._episode_stage = stage
        self._episode_split = split
        self._state = state
        self._task, self._room = _parse_intro(str(state.feedback))
        self._actions = list(state["admissible_commands"])
        self._done = False
        self._note_observed()
        return self._observation(), self._info()

    def step(self, action: int | str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Run ``action``: an index into ``info["valid_actions"]`` or an admissible command's text."""
        if self._game is None:
            raise RuntimeError("call reset() before step()")
        if self._done:
            raise RuntimeError("the episode is over; call reset()")
        command = self._command_of(action)
        self._steps += 1
        self._plan_cache = None
        reward = self.step_reward
        terminated = False
        if command is None:
            shown = " ".join(str(action).split())[:60] or "(empty)"
            event, feedback = "invalid", "Nothing happens."
            reward += self.invalid_penalty
            self._history.append((shown, feedback))
            self._last_command = shown
            if self.dangerous:
                terminated = self._crashed = True
        else:
            with preserved_argv(), private_random(self._expert_random):
                state, _, _ = self._engine.step(command)
            self._state = state
            feedback = " ".join(str(state.feedback).split())
            event = command.split()[0]
            self._history.append((command, feedback))
            self._last_command = command
            self._actions = list(state["admissible_commands"])
            self._note_observed()
            if state["won"]:
                reward += self.success_reward
                terminated = self._success = True
        self._last_event = event
        truncated = not terminated and self._steps >= self.horizon
        self._done = terminated or truncated
        info = self._info() | {"event": event, "command": self._last_command}
        return self._observation(), float(reward), terminated, truncated, info

    def render(self) -> str | None:
        """The observation text in ``ansi`` mode, None otherwise."""
        if self.render_mode == "ansi" and self._game is not None:
            return self._observation()
        return None

    def _command_of(self, action: int | str) -> str | None:
        if isinstance(action, str):
            text = " ".join(action.split())
            return text if text in self._actions else None
        if isinstance(action, bool) or not isinstance(action, int | np.integer):
            return None
        index = int(action)
        return self._actions[index] if 0 <= index < len(self._actions) else None

    # ---------------------------------------------------------------------- privileged
    def expert_plan(self) -> list[str]:
        """The expert's commands from the current state (handcoded: its next command only)."""
        if self._game is None:
            raise RuntimeError("call reset() first")
        if self._success or self._done:
            return []
        if self._plan_cache is None:
            if self.expert in ("planner", "search"):
                with preserved_argv():
                    self._plan_cache = list(self._pddl._pddl_state.replan(self._pddl._entity_infos))
                self._searching = False
                if self.expert == "search" and self._plan_cache and not self._knows_way(self._plan_cache[0]):
                    search = self._search_command()
                    if search is not None:
                        self._plan_cache, self._searching = [search], True
            else:
                self._plan_cache = [c for c in self._state.get("extra.expert_plan", []) if c in self._actions][:1]
        return list(self._plan_cache)

    def _note_observed(self) -> None:
        """After every reset and step: the place the agent stands at is seen inside unless closed.

        Only the search expert reads this; other envs (RL rollouts, evaluation) skip the work.
        """
        if self.expert != "search":
            return
        facts = self._facts()
        where = facts["location"]
        if where is not None and (where not in facts["openable"] or where in facts["opened"]):
            self._observed.add(where)

    def _knows_way(self, command: str) -> bool:
        """Whether an agent without privileged facts could know that ``command`` is a good move.

        Only a ``go to`` can need hidden knowledge: it is known when the place's inside has been
        seen, or when the task names its type (the goal receptacle, the treatment's tool).
        """
        if not command.startswith("go to "):
            return True
        assert self._game is not None
        place = command.removeprefix("go to ")
        known_types = {self._game.parent_target.lower(), TOOL_OF_TASK.get(self._game.task_type, "").lower()}
        return place in self._observed or _type_of(place) in known_types

    def _search_command(self) -> str | None:
        """The searching expert's move: open the closed receptacle here, else go to the first
        receptacle (in the order of the valid actions) whose inside has not been seen."""
        facts = self._facts()
        where = facts["location"]
        if where is not None and where not in self._observed and f"open {where}" in self._actions:
            return f"open {where}"
        assert self._game is not None
        sought = {self._game.object_target.lower()}
        if self._game.task_type == "look_at_obj_in_light":
            sought.add(self._game.toggle_target.lower())
        unseen = [
            command.removeprefix("go to ")
            for command in self._actions
            if command.startswith("go to ") and command.removeprefix("go to ") not in self._observed
        ]
        # Look first where the sought things can be (canContain: the same for every room).
        likely = [place for place in unseen if facts["can_contain"].get(_type_of(place), set()) & sought]
        return f"go to {(likely or unseen)[0]}" if unseen else None

    def oracle_actions(self) -> list[int]:
        """Index of the expert's next command (one optimal plan; ties are not enumerated)."""
        plan = self.expert_plan()
        return [self._actions.index(plan[0])] if plan and plan[0] in self._actions else []

    def negative_actions(self) -> list[int]:
        """Mistakes worth teaching (negative examples): acting commands that do not serve the task.

        Left out: the harmless look/inventory/help/examine, and commands as good as the expert's
        (anything done with another object of the target type, going where one lies).
        """
        assert self._game is not None
        passive = ("look", "inventory", "help", "examine")
        target = self._game.object_target.lower()
        facts = self._facts()
        places = {recep for obj, recep in facts["in"].items() if _type_of(obj) == target}
        wrong = []
        for index, command in enumerate(self._actions):
            words = command.split()
            if words[0] in passive or f" {target} " in f" {command} ":
                continue
            if words[0] == "go" and command.removeprefix("go to ") in places:
                continue
            wrong.append(index)
        return wrong

    def privileged_facts(self) -> dict[str, Any]:
        """JSON-serialisable facts about the current state, for the oracle and the teacher."""
        if self._game is None:
            raise RuntimeError("call reset() first")
        game = self._game
        plan = self.expert_plan()
        facts = self._facts()
        target = game.object_target.lower()
        goal_type = (game.toggle_target if game.task_type == "look_at_obj_in_light" else game.parent_target).lower()
        held = sorted(facts["holds"])
        return {
            "env": ENV_ID,
            "stage": self._episode_stage,
            "game": game.key,
            "task_type": game.task_type,
            "task": self._task,
            "object_type": target,
            "receptacle_type": goal_type,
            "next_action": plan[0] if plan else None,
            "plan": plan[:8],
            "steps_to_goal": None if self._searching else len(plan),  # a search's length is unknown
            "searching": self._searching,
            "location": facts["location"],
            "holding": held,
            "target_places": {
                obj: recep for obj, recep in sorted(facts["in"].items()) if _type_of(obj) == target
            },
            "goal_receptacles": sorted(r for r in facts["receptacles"] if _type_of(r) == goal_type),
            "opened": sorted(facts["opened"]),
            "hot": sorted(facts["hot"]),
            "cool": sorted(facts["cool"]),
            "clean": sorted(facts["clean"]),
            "last_command": self._last_command,
            "last_event": self._last_event,
            "success": self._success,
        }

    # ----------------------------------------------------------------------------- state
    def _facts(self) -> dict[str, Any]:
        """The current facts by predicate, with demangled names ("tomato 1")."""
        location_of_receptacle: dict[str, str] = {}
        agent_location = None
        result: dict[str, Any] = {
            "in": {}, "holds": [], "receptacles": set(), "opened": set(), "openable": set(), "hot": set(), "cool": set(),
            "clean": set(), "can_contain": {},
        }
        for fact in self._state["facts"] or []:
            names = [variable.name.strip() for variable in fact.arguments]
            if fact.name == "receptacleatlocation":
                location_of_receptacle[names[1]] = names[0]
                result["receptacles"].add(names[0])
            elif fact.name == "atlocation":
                agent_location = names[1]
            elif fact.name == "inreceptacle":
                result["in"][names[0]] = names[1]
            elif fact.name == "holds":
                result["holds"].append(names[1])
            elif fact.name == "cancontain":
                receptacle_type, object_type = (name.removesuffix("type") for name in names)
                result["can_contain"].setdefault(receptacle_type, set()).add(object_type)
            elif fact.name in ("opened", "openable"):
                result[fact.name].add(names[0])
            elif fact.name in ("ishot", "iscool", "isclean"):
                result[fact.name.removeprefix("is")].add(names[0])
        result["location"] = location_of_receptacle.get(agent_location) if agent_location else None
        return result

    def _observation(self) -> str:
        lines = [f"Task: {self._task}", f"Room: {self._room}"]
        shown = self._history[-self.history_length :] if self.history_length else []
        earlier = [command for command, _ in self._history[: len(self._history) - len(shown)]]
        if earlier and self.max_earlier_commands:
            cut = earlier[-self.max_earlier_commands :]
            lines.append("Earlier: " + ("...; " if len(cut) < len(earlier) else "") + "; ".join(cut))
        for command, feedback in shown:
            lines += [f"> {command}", feedback]
        facts = self._facts()
        held = ", ".join(sorted(facts["holds"])) or "nothing"
        lines.append(f"At: {facts['location'] or 'the middle of the room'}. Holding: {held}.")
        return "\n".join(_ascii(line) for line in lines)

    def _info(self) -> dict[str, Any]:
        assert self._game is not None
        return {
            "valid_actions": list(self._actions),
            "stage": self._episode_stage,
            "split": self._episode_split,
            "success": self._success,
            "crashed": self._crashed,
            "steps": self._steps,
            "task_type": self._game.task_type,
            "task": self._task,
            "game": self._game.key,
            "start_state": self._game.key,
        }


def _type_of(name: str) -> str:
    """``"tomato 1"`` -> ``"tomato"``; ``"sinkbasin 2"`` -> ``"sinkbasin"``."""
    return name.rsplit(" ", 1)[0] if name.rsplit(" ", 1)[-1].isdigit() else name


def _parse_intro(text: str) -> tuple[str, str]:
    """(task sentence, room description) from the game's welcome text."""
    task, room = "", ""
    for paragraph in text.split("\n"):
        paragraph = " ".join(paragraph.split())
        if paragraph.startswith("Your task is to:"):
            task = paragraph.removeprefix("Your task is to:").strip()
        elif "Looking quickly around you" in paragraph:
            room = paragraph.split("Looking quickly around you,", 1)[1].strip()
    return task or "(no task given)", room or "(nothing seen)"


def _ascii(text: str) -> str:
    return "".join(ch if " " <= ch <= "~" else "?" for ch in text)
