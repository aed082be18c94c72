"""DangerousTaxi: gymnasium's Taxi as a text game for language-model agents (Reflect-RL).

The game is gymnasium's deterministic Taxi (5x5 grid, walls, stations R, G, Y, B); this module
reuses gymnasium's :class:`~gymnasium.envs.toy_text.taxi.TaxiEnv` for the map, the walls, the
transition table ``P``, ``encode``/``decode`` and the set of start states, and adds:

* **Dangerous rules** (checked on every step, the first one included): a move into a wall or the
  border, a pick-up where the passenger is not (or is already aboard), and any drop-off that is
  not at the destination end the episode with ``crash_penalty``. With ``dangerous=False`` such
  an action only costs ``crash_penalty`` and leaves the state unchanged (used to generate
  negative examples that continue after the wrong action).
* **Curriculum stages**: ``pickup`` (success = first legal pick-up), ``dropoff`` (the passenger
  starts in the taxi; success = drop-off at the destination), ``full`` (pick-up, then drop-off).
* **Deterministic train/val/test splits** of the start states.
* **A text observation** (see :data:`OBS_LEGEND`) and a **privileged BFS oracle**
  (:meth:`DangerousTaxiEnv.oracle_actions`, :meth:`~DangerousTaxiEnv.oracle_plan`,
  :meth:`~DangerousTaxiEnv.privileged_facts`) that is never shown to the player.

Example observation (gym state 314: taxi at (3,0), passenger waiting at B, destination Y)::

    +---------+
    |R: | : :G|
    | : | : : |
    | : : : : |
    |T| : | : |
    |D| : |P: |
    +---------+
    Taxi (3,0). Passenger at B (4,3). Destination Y (4,0).
    History: none
"""

from __future__ import annotations

import hashlib
import math
import string
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.envs.toy_text.taxi import TaxiEnv

ENV_ID = "reflectrl/DangerousTaxi-v0"
"""The id this env is registered under (see ``reflectrl.envs``)."""

STAGES: tuple[str, ...] = ("pickup", "dropoff", "full")
"""Curriculum stages, easiest first."""

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Names of the start-state splits."""

ACTIONS: tuple[str, ...] = (
    "go south",
    "go north",
    "go east",
    "go west",
    "pick up passenger",
    "drop off passenger",
)
"""Action texts, indexed like gymnasium's Taxi actions (``info["valid_actions"]``)."""

SOUTH, NORTH, EAST, WEST, PICKUP, DROPOFF = range(6)

# One short word per action for the history line (every character costs the LM a token).
_HISTORY_WORDS: tuple[str, ...] = ("south", "north", "east", "west", "pickup", "dropoff")
_DIRECTIONS: tuple[str, ...] = _HISTORY_WORDS[:4]

STATIONS: tuple[str, ...] = ("R", "G", "Y", "B")
"""Station letters, indexed like gymnasium's ``pass_loc``/``dest_idx``."""

IN_TAXI = 4
"""gymnasium's ``pass_loc`` value for "passenger in the taxi"."""

N_STATES = 500

DEFAULT_SPLIT_FRACTIONS: tuple[float, float, float] = (0.6, 0.2, 0.2)

EVENTS: tuple[str, ...] = ("moved", "wall", "pickup", "dropoff", "illegal_pickup", "illegal_dropoff")
"""Values of ``info["event"]`` after a step."""

OBS_LEGEND = (
    "Map: '|' is a wall, ':' an open passage between cells; R, G, Y, B are the stations. "
    "T is the empty taxi, @ the taxi carrying the passenger, P the waiting passenger, "
    "D the destination. The taxi is drawn over anything else on its cell (e.g. over P when it "
    "stands on the passenger); the text line then says 'here' after the passenger's (or, with the "
    "passenger aboard, the destination's) position. Positions are (row,col), (0,0) is the top-left cell; south "
    "increases the row, east increases the column. History lists the last actions, oldest first."
)
"""How to read an observation; for prompts (the observation itself carries no legend)."""

# Every character an observation can contain (for the Text observation space).
_CHARSET = frozenset(string.ascii_letters + string.digits + " ,.():|+-@\n")

_STAGE_ERROR = "stage must be one of {}, got {!r}"


# --------------------------------------------------------------------------------------------
# Process-wide tables: built once (about 10 ms), then every oracle query is a table look-up.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Tables:
    base: TaxiEnv  # gymnasium's env, used read-only for P / encode / decode / desc / locs
    decoded: tuple[tuple[int, int, int, int], ...]  # state -> (row, col, pass_loc, dest)
    legal_next: np.ndarray  # [500, 6] next state of a legal action, -1 for a crash action
    dist: dict[str, np.ndarray]  # goal kind -> [500] steps to goal (-1: unreachable)
    good: dict[str, tuple[tuple[int, ...], ...]]  # goal kind -> state -> optimal actions
    start: dict[str, tuple[int, ...]]  # "waiting" / "aboard" -> sorted start states
    map_lines: tuple[str, ...]  # gymnasium's ASCII map


def _goal_kind(stage: str) -> str:
    """The goal a stage needs: the passenger aboard ("pickup") or delivered ("deliver")."""
    return "pickup" if stage == "pickup" else "deliver"


def _is_goal(kind: str, decoded: tuple[int, int, int, int]) -> bool:
    _, _, pass_loc, dest = decoded
    return pass_loc == IN_TAXI if kind == "pickup" else pass_loc == dest


@lru_cache(maxsize=1)
def _tables() -> _Tables:
    base = TaxiEnv()
    decoded = tuple(tuple(int(v) for v in base.decode(s)) for s in range(N_STATES))
    legal_next = np.full((N_STATES, 6), -1, dtype=np.int64)
    for s in range(N_STATES):
        for a in range(6):
            _, nxt, _, terminated = base.P[s][a][0]
            if a == DROPOFF:
                # gymnasium lets the passenger out at any station; only the destination
                # (the transition gymnasium marks terminated) is legal here.
                legal = bool(terminated)
            else:
                # A move that leaves the taxi in place hit a wall; a pick-up that changes
                # nothing found no passenger: both are crashes.
                legal = nxt != s
            if legal:
                legal_next[s, a] = nxt

    dist: dict[str, np.ndarray] = {}
    good: dict[str, tuple[tuple[int, ...], ...]] = {}
    for kind in ("pickup", "deliver"):
        # Reverse BFS from the goal states over the legal (non-crash) transitions.
        preds: list[list[int]] = [[] for _ in range(N_STATES)]
        for s in range(N_STATES):
            if _is_goal(kind, decoded[s]):
                continue  # an episode ends at a goal state: no transitions out of it
            for a in range(6):
                if legal_next[s, a] >= 0:
                    preds[legal_next[s, a]].append(s)
        d = np.full(N_STATES, -1, dtype=np.int64)
        queue: deque[int] = deque()
        for s in range(N_STATES):
            if _is_goal(kind, decoded[s]):
                d[s] = 0
                queue.append(s)
        while queue:
            s = queue.popleft()
            for p in preds[s]:
                if d[p] < 0:
                    d[p] = d[s] + 1
                    queue.append(p)
        dist[kind] = d
        good[kind] = tuple(
            tuple(
                a for a in range(6) if d[s] > 0 and legal_next[s, a] >= 0 and d[legal_next[s, a]] == d[s] - 1
            )
            for s in range(N_STATES)
        )

    # gymnasium's start states: passenger waiting at a station other than the destination.
    waiting = tuple(int(s) for s in np.flatnonzero(base.initial_state_distrib))
    aboard = tuple(s for s in range(N_STATES) if decoded[s][2] == IN_TAXI)
    map_lines = tuple(row.tobytes().decode("ascii") for row in base.desc)
    return _Tables(base, decoded, legal_next, dist, good, {"waiting": waiting, "aboard": aboard}, map_lines)


def _split_key(stage: str, decoded: tuple[int, int, int, int]) -> str:
    """The group a start state is split by.

    For ``pickup``/``full`` starts the group is (taxi cell, passenger station): the 3 starts that
    differ only in the destination land in the same split, so a test pick-up task is never a
    training task with just another destination marker, and ``pickup`` and ``full`` share one
    partition (a ``full`` test start is never a ``pickup`` training start). ``dropoff`` starts
    (taxi cell, destination) are their own group.
    """
    row, col, pass_loc, dest = decoded
    if stage == "dropoff":
        return f"aboard:{row},{col},{dest}"
    return f"waiting:{row},{col},{pass_loc}"


@lru_cache(maxsize=64)
def _partition(stage: str, fractions: tuple[float, float, float]) -> dict[str, tuple[int, ...]]:
    tables = _tables()
    states = tables.start["aboard" if stage == "dropoff" else "waiting"]
    groups: dict[str, list[int]] = {}
    for s in states:
        groups.setdefault(_split_key(stage, tables.decoded[s]), []).append(s)
    # Order the groups by a fixed cryptographic hash: identical in every process, independent
    # of PYTHONHASHSEED and of numpy's RNG streams.
    order = sorted(groups, key=lambda k: hashlib.sha256(f"reflectrl/DangerousTaxi:{k}".encode()).hexdigest())
    n_train = round(fractions[0] * len(order))
    n_val = min(round(fractions[1] * len(order)), len(order) - n_train)
    cuts = {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    return {split: tuple(sorted(s for k in keys for s in groups[k])) for split, keys in cuts.items()}


def _check_fractions(split_fractions: Sequence[float]) -> tuple[float, float, float]:
    fractions = tuple(float(f) for f in split_fractions)
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(
            f"split_fractions must be 3 non-negative numbers summing to 1, got {split_fractions!r}"
        )
    return fractions  # type: ignore[return-value]


def start_states(
    stage: str,
    split: str | None = None,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
) -> list[int]:
    """Sorted gym-encoded start states of ``stage``, restricted to ``split`` unless it is None.

    ``pickup``/``full``: gymnasium's 300 starts (taxi anywhere, passenger waiting at one station,
    another station as destination). ``dropoff``: the 100 states with the passenger aboard.
    The partition is deterministic (fixed hash) and depends only on ``split_fractions``.
    """
    if stage not in STAGES:
        raise ValueError(_STAGE_ERROR.format(STAGES, stage))
    parts = _partition(stage, _check_fractions(split_fractions))
    if split is None:
        return sorted(s for part in parts.values() for s in part)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    return list(parts[split])


def _split_of(stage: str, state: int, fractions: tuple[float, float, float]) -> str | None:
    for split, states in _partition(stage, fractions).items():
        if state in states:
            return split
    return None


def _cell(pos: tuple[int, int]) -> str:
    return f"({pos[0]},{pos[1]})"


class DangerousTaxiEnv(gymnasium.Env[str, int]):
    """Text Taxi with crash rules, curriculum stages, start-state splits and a BFS oracle.

    Observations are strings (see the module docstring and :data:`OBS_LEGEND`); actions are
    indices into ``info["valid_actions"]`` (always :data:`ACTIONS`). Every info holds
    ``valid_actions``, ``stage``, ``split`` (the split the episode's start state belongs to,
    None for a ``start_state`` outside the stage's start states), ``success``, ``crashed``
    (True only when a crash ended the episode), ``start_state`` and ``steps``; step infos also
    hold ``event`` (one of :data:`EVENTS`).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        stage: str = "full",
        horizon: int = 24,
        dangerous: bool = True,
        step_reward: float = -0.05,
        crash_penalty: float = -0.5,
        pickup_bonus: float = 1.0,
        dropoff_reward: float = 1.0,
        history_length: int = 6,
        split_fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS,
        render_mode: str | None = None,
        split: str | None = None,
    ) -> None:
        """Create the env.

        Args:
            stage: default curriculum stage, "pickup", "dropoff" or "full" (``reset`` options
                may override it for one episode).
            horizon: episode length limit; the episode is truncated when the step count reaches
                it. The longest optimal solutions are 9 (pickup), 9 (dropoff) and 18 (full)
                steps, so the default 24 leaves 6 steps of slack.
            dangerous: if True a crash action (wall bump, illegal pick-up or drop-off) ends the
                episode; if False it only costs ``crash_penalty`` and the state is unchanged.
            step_reward: reward of every ordinary step.
            crash_penalty: reward of a crash action.
            pickup_bonus: reward of the first legal pick-up (ends the ``pickup`` stage).
            dropoff_reward: reward of the legal drop-off at the destination (success).
            history_length: how many past actions the observation lists (0: no history line).
            split_fractions: train/val/test shares of the start states.
            render_mode: None or "ansi" (``render()`` returns the observation text).
            split: default start-state split for ``reset`` ("train", "val", "test" or None for
                all start states); ``reset`` options may override it for one episode.
        """
        super().__init__()
        if stage not in STAGES:
            raise ValueError(_STAGE_ERROR.format(STAGES, stage))
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if history_length < 0:
            raise ValueError(f"history_length must be >= 0, got {history_length}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.stage = stage
        self.split = split
        self.horizon = int(horizon)
        self.dangerous = bool(dangerous)
        self.step_reward = float(step_reward)
        self.crash_penalty = float(crash_penalty)
        self.pickup_bonus = float(pickup_bonus)
        self.dropoff_reward = float(dropoff_reward)
        self.history_length = int(history_length)
        self.split_fractions = _check_fractions(split_fractions)
        self.render_mode = render_mode

        self.action_space = spaces.Discrete(len(ACTIONS))
        self.observation_space = spaces.Text(max_length=self._max_obs_length(), charset=_CHARSET)

        # Episode state; None until the first reset().
        self._state: int | None = None
        self._episode_stage = stage
        self._episode_split: str | None = None
        self._start_state = -1
        self._steps = 0
        self._history: list[int] = []
        self._done = False
        self._success = False
        self._crashed = False
        self._bonus_given = False
        self._last_event: str | None = None

    @property
    def _tables(self) -> _Tables:
        # Shared, read-only, process-wide tables; not stored on the instance so that copying an
        # env (e.g. copy.deepcopy to branch off a negative example) stays cheap.
        return _tables()

    # ---------------------------------------------------------------- start states / splits
    @classmethod
    def start_states(
        cls,
        stage: str,
        split: str | None = None,
        split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    ) -> list[int]:
        """Sorted start states of ``stage`` in ``split`` (all if None); see :func:`start_states`.

        Pass the env's ``split_fractions`` when it is not the default.
        """
        return start_states(stage, split, split_fractions)

    # ---------------------------------------------------------------------------- gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Start an episode.

        Options: ``stage`` (overrides the constructor's stage for this episode), ``split``
        ("train"/"val"/"test"/None, default the constructor's) and ``start_state`` (an exact
        gym-encoded state; it must be valid for the stage: not delivered, and for ``pickup``
        the passenger waiting, for ``dropoff`` the passenger aboard). Without ``start_state``
        the start is drawn uniformly from the split's start states with ``self.np_random``.
        """
        super().reset(seed=seed)
        options = dict(options or {})
        stage = options.get("stage") or self.stage
        if stage not in STAGES:
            raise ValueError(_STAGE_ERROR.format(STAGES, stage))
        split = options.get("split", self.split)
        if options.get("start_state") is not None:
            state = self._checked_start_state(stage, options["start_state"])
        else:
            candidates = start_states(stage, split, self.split_fractions)
            if not candidates:
                raise ValueError(
                    f"split {split!r} of stage {stage!r} is empty (split_fractions={self.split_fractions})"
                )
            state = candidates[int(self.np_random.integers(len(candidates)))]

        self._state = state
        self._episode_stage = stage
        self._episode_split = _split_of(stage, state, self.split_fractions)
        self._start_state = state
        self._steps = 0
        self._history = []
        self._done = False
        self._success = False
        self._crashed = False
        self._bonus_given = False
        self._last_event = None
        return self._observation(), self._info()

    def step(self, action: int) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Take action ``action`` (an index into ``info["valid_actions"]``)."""
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        if self._done:
            raise RuntimeError("the episode is over; call reset()")
        a = int(action)
        if not 0 <= a < len(ACTIONS):
            raise ValueError(f"action must be in [0, {len(ACTIONS)}), got {action!r}")

        self._steps += 1
        self._history.append(a)
        nxt = int(self._tables.legal_next[self._state, a])
        terminated = False
        if nxt < 0:  # crash action: the state stays as it is in both modes
            event = "wall" if a < PICKUP else ("illegal_pickup" if a == PICKUP else "illegal_dropoff")
            reward = self.crash_penalty
            if self.dangerous:
                terminated = self._crashed = True
        else:
            self._state = nxt
            if a == PICKUP:
                event = "pickup"
                if self._episode_stage == "pickup":
                    reward = self.pickup_bonus
                    terminated = self._success = True
                else:
                    # The bonus is paid once per episode (with drop-offs elsewhere than the
                    # destination illegal, a second pick-up cannot happen anyway).
                    reward = self.step_reward if self._bonus_given else self.pickup_bonus
                    self._bonus_given = True
            elif a == DROPOFF:  # legal only at the destination: success
                event = "dropoff"
                reward = self.dropoff_reward
                terminated = self._success = True
            else:
                event = "moved"
                reward = self.step_reward
        truncated = not terminated and self._steps >= self.horizon
        self._done = terminated or truncated
        self._last_event = event
        info = self._info()
        info["event"] = event
        return self._observation(), float(reward), terminated, truncated, info

    def render(self) -> str | None:
        """The observation text in "ansi" mode, None otherwise."""
        if self.render_mode == "ansi" and self._state is not None:
            return self._observation()
        return None

    # ---------------------------------------------------------------- privileged oracle
    @property
    def state(self) -> int:
        """The current gym-encoded state ((row*5+col)*5+pass_loc)*4+dest (privileged)."""
        if self._state is None:
            raise RuntimeError("call reset() first")
        return self._state

    def oracle_actions(self) -> list[int]:
        """All optimal action indices from the current state for the episode's stage.

        Optimal = on a shortest crash-free path to success (which also maximises the return).
        Empty at a goal state (after success). After a crash the state is unchanged, so the
        answer is what should have been done instead.
        """
        return list(self._tables.good[_goal_kind(self._episode_stage)][self.state])

    def oracle_plan(self) -> list[int]:
        """One optimal action sequence from the current state to success (lowest index first)."""
        good = self._tables.good[_goal_kind(self._episode_stage)]
        s, plan = self.state, []
        while good[s]:
            a = good[s][0]
            plan.append(a)
            s = int(self._tables.legal_next[s, a])
        return plan

    def steps_to_goal(self) -> int:
        """Length of an optimal solution from the current state (0 at a goal state)."""
        return int(self._tables.dist[_goal_kind(self._episode_stage)][self.state])

    def privileged_facts(self) -> dict[str, Any]:
        """JSON-serialisable facts about the current state, for the oracle and the teacher."""
        row, col, pass_loc, dest = self._tables.decoded[self.state]
        locs = self._tables.base.locs
        aboard = pass_loc == IN_TAXI
        passenger_pos = None if aboard else list(locs[pass_loc])
        go_to_passenger = self._episode_stage == "pickup" or (not aboard and pass_loc != dest)
        blocked = [_DIRECTIONS[a] for a in range(PICKUP) if self._tables.legal_next[self.state, a] < 0]
        plan = self.oracle_plan()
        return {
            "env": ENV_ID,
            "stage": self._episode_stage,
            "taxi": [row, col],
            "passenger": "taxi" if aboard else STATIONS[pass_loc],
            "passenger_pos": passenger_pos,
            "destination": STATIONS[dest],
            "destination_pos": list(locs[dest]),
            "target": "passenger" if go_to_passenger else "destination",
            "target_pos": (passenger_pos or [row, col]) if go_to_passenger else list(locs[dest]),
            "blocked": blocked,
            "next_action": ACTIONS[plan[0]] if plan else None,
            "good_actions": [ACTIONS[a] for a in self.oracle_actions()],
            "steps_to_goal": self.steps_to_goal(),
            "last_event": self._last_event,
        }

    # ---------------------------------------------------------------------------- helpers
    def _checked_start_state(self, stage: str, value: Any) -> int:
        state = int(value)
        if not 0 <= state < N_STATES:
            raise ValueError(f"start_state must be in [0, {N_STATES}), got {value!r}")
        _, _, pass_loc, dest = self._tables.decoded[state]
        if pass_loc == dest:
            raise ValueError(f"start_state {state}: the passenger is already delivered")
        if stage == "pickup" and pass_loc == IN_TAXI:
            raise ValueError(f"start_state {state}: the pickup stage needs the passenger waiting")
        if stage == "dropoff" and pass_loc != IN_TAXI:
            raise ValueError(f"start_state {state}: the dropoff stage needs the passenger aboard")
        return state

    def _info(self) -> dict[str, Any]:
        return {
            "valid_actions": list(ACTIONS),
            "stage": self._episode_stage,
            "split": self._episode_split,
            "success": self._success,
            "crashed": self._crashed,
            "start_state": self._start_state,
            "steps": self._steps,
        }

    def _max_obs_length(self) -> int:
        map_len = sum(len(line) + 1 for line in self._tables.map_lines)  # each line + "\n"
        facts_len = max(len(self._facts_line(s)) for s in range(N_STATES))
        history_len = 0
        if self.history_length:
            words = max(len("none"), self.history_length * (max(map(len, _HISTORY_WORDS)) + 2) - 2)
            history_len = 1 + len("History: ") + words
        return map_len + facts_len + history_len

    def _facts_line(self, state: int) -> str:
        row, col, pass_loc, dest = self._tables.decoded[state]
        locs = self._tables.base.locs
        taxi = (row, col)
        # "here" marks the cell where the taxi can act (pick up the waiting passenger, drop off the
        # one aboard). The grid draws the taxi over that cell's letter, so without the word the
        # player must compare two coordinate pairs to notice it, which the tiny default model
        # failed to do on held-out starts (it wrote "four rows up" while on the passenger's cell).
        if pass_loc == IN_TAXI:
            passenger = "Passenger in taxi."
        elif pass_loc == dest:
            passenger = "Passenger delivered."
        else:
            here = ", here" if tuple(locs[pass_loc]) == taxi else ""
            passenger = f"Passenger at {STATIONS[pass_loc]} {_cell(locs[pass_loc])}{here}."
        drop_here = ", here" if pass_loc == IN_TAXI and tuple(locs[dest]) == taxi else ""
        return f"Taxi {_cell(taxi)}. {passenger} Destination {STATIONS[dest]} {_cell(locs[dest])}{drop_here}."

    def _observation(self) -> str:
        row, col, pass_loc, dest = self._tables.decoded[self.state]
        locs = self._tables.base.locs
        grid = [list(line) for line in self._tables.map_lines]

        # Cell (r, c) is drawn at line 1 + r, character 2c + 1, so the taxi's character has a
        # fixed offset per cell. Later marks win: D < P < taxi.
        def mark(pos: tuple[int, int], char: str) -> None:
            grid[1 + pos[0]][2 * pos[1] + 1] = char

        mark(locs[dest], "D")
        if pass_loc < IN_TAXI and pass_loc != dest:
            mark(locs[pass_loc], "P")
        mark((row, col), "@" if pass_loc == IN_TAXI else "T")
        lines = ["".join(line) for line in grid]
        lines.append(self._facts_line(self.state))
        if self.history_length:
            recent = self._history[-self.history_length :]
            lines.append("History: " + (", ".join(_HISTORY_WORDS[a] for a in recent) if recent else "none"))
        return "\n".join(lines)
