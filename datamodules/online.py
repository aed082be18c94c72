"""Online RL data: an endless stream of rollout requests over a pool of live environments.

The stream yields cheap *requests*, never experience: the LightningModule plays the episodes
inside ``training_step`` with the weights of that very step, so Lightning's one-batch prefetch
(lightning-notes P3) cannot make a rollout stale. Episode seeds come from the module's own
rollout counter (checkpointed), and the stage is read when the request is played, so a
curriculum switch applies to the next batch without reloading any dataloader.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import lightning.pytorch as pl

import reflectrl.envs  # noqa: F401  (registers the reflectrl/* env ids)
from reflectrl.datamodules.episodes import EnvEvalConfig, EpisodeBatches, check_env, make_env
from reflectrl.errors import ReflectRLError


def episode_seed(base_seed: int, rollout_index: int, episode_index: int) -> int:
    """A stable 31-bit seed for episode ``episode_index`` of rollout batch ``rollout_index``."""
    digest = hashlib.sha256(f"{base_seed}/{rollout_index}/{episode_index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class RolloutRequest:
    """Play ``len(envs)`` fresh episodes now, in the current curriculum stage."""

    def __init__(self, datamodule: OnlineEnvDataModule) -> None:
        self.datamodule = datamodule

    @property
    def envs(self) -> list[gym.Env]:
        return self.datamodule.envs()

    @property
    def stage(self) -> str:
        # Read at play time, not when the request was created (prefetch).
        return self.datamodule.stage

    @property
    def split(self) -> str:
        return self.datamodule.split

    def seeds(self, rollout_index: int) -> list[int]:
        base = self.datamodule.seed
        return [episode_seed(base, rollout_index, i) for i in range(self.datamodule.episodes_per_batch)]

    def options(self) -> dict[str, Any]:
        return {"stage": self.stage, "split": self.split}


class RolloutStream:
    """Endless iterable of RolloutRequests. Deliberately has no ``__len__`` (lightning-notes P2)."""

    def __init__(self, datamodule: OnlineEnvDataModule) -> None:
        self.datamodule = datamodule

    def __iter__(self) -> Iterator[RolloutRequest]:
        while True:
            yield RolloutRequest(self.datamodule)

    # The stream itself holds no position: what a resumed run must continue (rollout counter,
    # curriculum stage, RNGs) lives in the module's and the callbacks' checkpoint state. Saying
    # so through Lightning's stateful-loader protocol tells the fit loop that resuming mid-"epoch"
    # is exact, instead of warning that the loader is not resumable.
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        del state_dict


class OnlineEnvDataModule(pl.LightningDataModule):
    """Environments for online RL (train split), plus evaluation episodes for val and test."""

    def __init__(
        self,
        env_id: str = "reflectrl/DangerousTaxi-v0",
        env_kwargs: dict[str, Any] | None = None,
        stage: str = "full",
        split: str = "train",
        episodes_per_batch: int = 32,
        seed: int = 0,
        validation: EnvEvalConfig | None = None,
        evaluation: EnvEvalConfig | None = None,
    ) -> None:
        """
        Args:
            env_id: registered gymnasium id of the environment.
            env_kwargs: its constructor arguments.
            stage: curriculum stage before any CurriculumCallback sets one.
            split: start-state split that training episodes are drawn from.
            episodes_per_batch: episodes played (in lockstep) per rollout batch.
            seed: base of the episode seeds (seed, rollout index, episode index).
            validation: small greedy evaluation run at every validation check (held-out val split).
            evaluation: the ``test`` evaluation (held-out test split), written to results.json.
        """
        super().__init__()
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs or {})
        self.stage = stage
        self.split = split
        self.episodes_per_batch = episodes_per_batch
        self.seed = seed
        self.validation = validation
        self.evaluation = evaluation
        self._envs: list[gym.Env] | None = None
        if episodes_per_batch < 1:
            raise ReflectRLError(f"config key 'data.init_args.episodes_per_batch': must be >= 1, got {episodes_per_batch}")

    def setup(self, stage: str) -> None:
        # Make one env of each kind up front, so a bad env config fails before any training time
        # is spent (the evaluation's would fail only after fit, when evaluate_after_fit plays it).
        if stage == "fit":
            self.check_stages([self.stage], "data.init_args")
            for config, key in ((self.validation, "data.init_args.validation"), (self.evaluation, "data.init_args.evaluation")):
                if config is not None:
                    EpisodeBatches(config, key).check()

    def check_stages(self, stages: list[str], key: str) -> None:
        """Reset one env in each of ``stages`` (this split): a curriculum naming a stage the env
        does not know fails at fit start, not when the schedule reaches it."""
        resets = [({"stage": stage, "split": self.split}, key) for stage in stages]
        check_env(self.env_id, self.env_kwargs, "data.init_args.env_kwargs", resets)

    def envs(self) -> list[gym.Env]:
        if self._envs is None:
            self._envs = [make_env(self.env_id, self.env_kwargs, "data.init_args.env_kwargs") for _ in range(self.episodes_per_batch)]
        return self._envs

    def train_dataloader(self) -> RolloutStream:
        # num_workers is 0 by construction (a plain iterable): workers would copy the policy.
        return RolloutStream(self)

    def val_dataloader(self) -> EpisodeBatches | list:
        return EpisodeBatches(self.validation, "data.init_args.validation") if self.validation is not None else []

    def test_dataloader(self) -> EpisodeBatches:
        if self.evaluation is None:
            raise ReflectRLError("config key 'data.init_args.evaluation': must be set for `test`")
        return EpisodeBatches(self.evaluation)

    # The stage belongs to the CurriculumCallback; the DataModule only mirrors it.
