"""Evaluation episodes as a dataloader: cheap specs (envs + seeds + stage), played by the module.

A batch is an :class:`EpisodeBatch`; the LightningModule plays it with the current players in
its ``test_step``/``validation_step`` (see ``reflectrl.rollout.play_episodes``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import reflectrl.envs  # noqa: F401  (registers the reflectrl/* env ids)
from reflectrl.errors import ReflectRLError


def make_env(env_id: str, env_kwargs: dict[str, Any], key: str) -> gym.Env:
    """``gym.make(env_id, **env_kwargs)``; a bad id or argument (a missing tasks file, a malformed
    line, a target outside the root...) is a one-line error naming the config ``key``."""
    try:
        return gym.make(env_id, **env_kwargs)
    except (gym.error.Error, TypeError, ValueError, OSError) as error:
        message = " ".join(str(error).split())
        raise ReflectRLError(f"config key '{key}': cannot make env {env_id!r}: {message}") from None


def check_env(
    env_id: str,
    env_kwargs: dict[str, Any],
    key: str,
    resets: Sequence[tuple[dict[str, Any], str]] = (),
) -> None:
    """Make one env (see :func:`make_env`), reset it once with each ``(options, key)`` of
    ``resets`` (a stage or split the env does not know is a one-line error naming that key), and
    close it, with every global RNG left as it was, so the check changes no later random draw."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            env = make_env(env_id, env_kwargs, key)
            try:
                for options, options_key in resets:
                    try:
                        env.reset(seed=0, options=options)
                    except ValueError as error:
                        shown = ", ".join(f"{name} {value!r}" for name, value in options.items())
                        message = " ".join(str(error).split())
                        raise ReflectRLError(f"config key '{options_key}' ({shown}): {message}") from None
            finally:
                env.close()
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


@dataclass
class EnvEvalConfig:
    """Which environment episodes to evaluate on."""

    env_id: str = "reflectrl/DangerousTaxi-v0"
    """Registered gymnasium id of the environment."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Constructor arguments of the environment."""
    stages: list[str] = field(default_factory=lambda: ["pickup", "full"])
    """Curriculum stages to evaluate, each reported separately."""
    split: str = "test"
    """Start-state split to draw episodes from (held out from the SFT data)."""
    episodes: int = 100
    """Episodes per stage."""
    batch_size: int = 50
    """Episodes played in lockstep (one batched forward per step)."""
    seed: int = 10_000
    """Seeds of the episodes are seed, seed+1, ... (the same for every stage)."""

    def __post_init__(self) -> None:
        if not self.stages:
            raise ReflectRLError(
                "config key 'stages' of an evaluation (data.init_args.validation or .evaluation): must list a stage"
            )
        for name in ("episodes", "batch_size"):
            if getattr(self, name) < 1:
                raise ReflectRLError(
                    f"config key '{name}' of an evaluation (data.init_args.validation or .evaluation): "
                    f"must be >= 1, got {getattr(self, name)}"
                )


class EpisodeBatch:
    """Envs to play, one episode each. A plain class so Lightning's batch transfer leaves it alone."""

    def __init__(self, env_id: str, envs: list[gym.Env], seeds: list[int], options: dict[str, Any]) -> None:
        self.env_id = env_id
        self.envs = envs
        self.seeds = seeds
        self.options = options

    @property
    def stage(self) -> str:
        return str(self.options.get("stage", ""))

    def __len__(self) -> int:
        return len(self.seeds)


class EpisodeBatches:
    """Re-iterable stream of EpisodeBatch for every stage of an EnvEvalConfig.

    The env instances are made once and reused (env state is fully reset by ``reset(seed)``).
    """

    def __init__(self, config: EnvEvalConfig, key: str = "data.init_args.evaluation") -> None:
        self.config = config
        self.key = key
        self._envs: list[gym.Env] | None = None

    def envs(self) -> list[gym.Env]:
        if self._envs is None:
            where = f"{self.key}.env_kwargs"
            self._envs = [make_env(self.config.env_id, self.config.env_kwargs, where) for _ in range(self.config.batch_size)]
        return self._envs

    def check(self) -> None:
        """Make one env and reset it in each stage, so a bad config (env arguments, a stage or
        split the env does not know) fails before training, not after it."""
        cfg = self.config
        resets = [({"stage": stage, "split": cfg.split}, f"{self.key}.stages") for stage in cfg.stages]
        check_env(cfg.env_id, cfg.env_kwargs, f"{self.key}.env_kwargs", resets)

    def __iter__(self) -> Iterator[EpisodeBatch]:
        cfg = self.config
        seeds = np.arange(cfg.seed, cfg.seed + cfg.episodes).tolist()
        for stage in cfg.stages:
            for start in range(0, cfg.episodes, cfg.batch_size):
                chunk = seeds[start : start + cfg.batch_size]
                yield EpisodeBatch(cfg.env_id, self.envs()[: len(chunk)], chunk, {"stage": stage, "split": cfg.split})

    def __len__(self) -> int:
        # A finite, exact length: lets Lightning show a progress bar for evaluation.
        per_stage = -(-self.config.episodes // self.config.batch_size)
        return per_stage * len(self.config.stages)
