"""Play batches of episodes: environments stepped together, one batched decision per step.

Knows the env API of ARCHITECTURE.md (text observations, ``info["valid_actions"]``) and nothing
of models: the caller passes a ``decide`` function. Evaluation and RL rollouts both use it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from reflectrl.errors import ReflectRLError


@dataclass
class Decision:
    """What the agent chose at one state."""

    action: int
    """Index into the state's ``valid_actions``."""
    invalid: bool = False
    """True when the agent's raw answer named no valid action (free-text LLM baselines); the
    env is then stepped with ``action`` all the same (a fallback chosen by the agent)."""
    extra: Any = None
    """Anything the caller wants back with the step (prompt, log-prob, value, reflection...)."""


@dataclass
class Transition:
    """One decision of one episode."""

    observation: str
    valid_actions: list[str]
    decision: Decision
    reward: float
    done: bool


@dataclass
class Episode:
    """A finished episode and its summary statistics."""

    seed: int
    stage: str
    transitions: list[Transition] = field(default_factory=list)
    success: bool = False
    crashed: bool = False
    start_state: Any = None
    """The env's ``info["start_state"]`` at reset (Taxi: the encoded state; AutoExplore: the task)."""

    @property
    def total_return(self) -> float:
        return float(sum(t.reward for t in self.transitions))

    @property
    def length(self) -> int:
        return len(self.transitions)

    @property
    def invalid_choices(self) -> int:
        return sum(t.decision.invalid for t in self.transitions)


DecideFn = Callable[[Sequence[str], Sequence[list[str]]], list[Decision]]
"""``decide(observations, valid_action_lists) -> decisions``, batched over live episodes."""


def play_episodes(
    envs: Sequence[gym.Env],
    seeds: Sequence[int],
    options: dict[str, Any],
    decide: DecideFn,
    max_steps: int = 1000,
) -> list[Episode]:
    """Run one episode per env (``envs[i]`` reset with ``seeds[i]``), all stepped in lockstep.

    ``max_steps`` is a safety net only; envs truncate at their own horizon.
    """
    if len(envs) != len(seeds):
        raise ValueError(f"{len(envs)} envs but {len(seeds)} seeds")
    stage = str(options.get("stage", ""))
    episodes = [Episode(seed=int(seed), stage=stage) for seed in seeds]
    observations: list[str] = []
    infos: list[dict[str, Any]] = []
    for episode, env, seed in zip(episodes, envs, seeds, strict=True):
        observation, info = env.reset(seed=int(seed), options=dict(options))
        observations.append(observation)
        infos.append(info)
        episode.start_state = info.get("start_state")
    live = list(range(len(envs)))
    for _ in range(max_steps):
        if not live:
            break
        for i in live:
            _check_actions(envs[i], episodes[i], observations[i], infos[i])
        decisions = decide([observations[i] for i in live], [list(infos[i]["valid_actions"]) for i in live])
        still_live = []
        for i, decision in zip(live, decisions, strict=True):
            observation, reward, terminated, truncated, info = envs[i].step(decision.action)
            done = bool(terminated or truncated)
            episodes[i].transitions.append(
                Transition(observations[i], list(infos[i]["valid_actions"]), decision, float(reward), done)
            )
            observations[i], infos[i] = observation, info
            if done:
                episodes[i].success = bool(info.get("success", False))
                episodes[i].crashed = bool(info.get("crashed", False))
            else:
                still_live.append(i)
        live = still_live
    return episodes


def env_name(env: gym.Env) -> str:
    """The env's registered id (``reflectrl/AutoExplore-v0``) for error messages; its class name
    when it was built without ``gymnasium.make``."""
    return env.spec.id if env.spec is not None else type(env.unwrapped).__name__


def _check_actions(env: gym.Env, episode: Episode, observation: str, info: dict[str, Any]) -> None:
    """A running episode must offer an action: with none, no agent can choose (the scorer, the
    sampler and a chat baseline's random fallback each fail with an error that names no env), and
    stepping anyway would only repeat an invalid command until the horizon. AutoExplore gets here
    when the root cannot be listed or lists nothing it can act on (a tree changed after the task
    check, or ``check_targets=False``)."""
    if not info.get("valid_actions"):
        raise ReflectRLError(
            f"env {env_name(env)} (seed {episode.seed}, stage {episode.stage!r}) offers no valid action at step "
            f"{episode.length} of a running episode; observation: {' '.join(observation.split())[:160]}"
        )
