"""Environment evaluation shared by every module whose players act (policy SFT, RLFT)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import lightning.pytorch as pl
from torch import nn

from reflectrl.datamodules.episodes import EpisodeBatch
from reflectrl.modules.metrics import EpisodeMetrics, write_results
from reflectrl.rollout import Decision, play_episodes

log = logging.getLogger("reflectrl")


class Agent(Protocol):
    """Anything that plays: TwoPlayerAgent (trained players) or ChatAgent (prompted chat models)."""

    def decide(self, observations: Sequence[str], valid_actions: Sequence[list[str]]) -> list[Decision]: ...


class EnvEvaluation(nn.Module):
    """Plays EpisodeBatches greedily, accumulates per-stage metrics, writes ``results.json``."""

    def __init__(self, phase: str) -> None:
        super().__init__()
        self.phase = phase
        self.metrics = EpisodeMetrics()
        self.env_id = ""
        # What the episodes covered, per stage (recorded in results.json): many seeds can draw
        # the same start state (Taxi has 60 held-out starts per stage), so count them apart.
        self.coverage: dict[str, dict[str, Any]] = {}

    def play(self, batch: EpisodeBatch, agent: Agent) -> None:
        episodes = play_episodes(batch.envs, batch.seeds, batch.options, agent.decide)
        self.env_id = batch.env_id
        self.metrics.update(batch.stage, episodes)
        seen = self.coverage.setdefault(batch.stage, {"split": batch.options.get("split"), "seeds": [], "starts": set()})
        seen["seeds"].extend(int(seed) for seed in batch.seeds)
        seen["starts"].update(repr(e.start_state) for e in episodes if e.start_state is not None)

    def finish(self, module: pl.LightningModule, extra: dict[str, Any] | None = None) -> dict[str, dict[str, float]]:
        """Log ``{phase}/{stage}/{metric}``, write results.json into the run folder, reset."""
        per_stage = self.metrics.compute()
        for stage, values in per_stage.items():
            for name, value in values.items():
                module.log(f"{self.phase}/{stage}/{name}", float(value), batch_size=1, sync_dist=False)
        trainer = module.trainer
        if per_stage and trainer.is_global_zero and self.phase == "test":
            folder = Path(trainer.log_dir or trainer.default_root_dir)
            covered = {
                stage: {
                    "split": seen["split"],
                    "seeds": [min(seen["seeds"]), max(seen["seeds"])],
                    "distinct_starts": len(seen["starts"]) or None,
                }
                for stage, seen in self.coverage.items()
            }
            rows = {stage: values | covered.get(stage, {}) for stage, values in per_stage.items()}
            path = write_results(folder / "results.json", self.env_id, rows, extra or {})
            log.info("wrote %s", path)
            for stage, values in per_stage.items():
                log.info(
                    "%s %s: success %.1f%%, return %.3f, crash %.1f%% over %d episodes",
                    self.phase, stage, 100 * values["success_rate"], values["mean_return"],
                    100 * values["crash_rate"], values["episodes"],
                )
        self.metrics.reset()
        self.coverage = {}
        return per_stage
