"""Per-stage episode metrics (torchmetrics) and the ``results.json`` they are written to."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric, SumMetric

from reflectrl.provenance import environment
from reflectrl.rollout import Episode

EPISODE_METRICS = ("success_rate", "mean_return", "crash_rate", "invalid_choice_rate", "mean_length")


class StageMetrics(nn.Module):
    """Running means over the episodes of one curriculum stage."""

    def __init__(self) -> None:
        super().__init__()
        self.success_rate = MeanMetric()
        self.mean_return = MeanMetric()
        self.crash_rate = MeanMetric()
        self.invalid_choice_rate = MeanMetric()
        self.mean_length = MeanMetric()
        self.episodes = SumMetric()

    def update(self, episodes: list[Episode]) -> None:
        for episode in episodes:
            self.success_rate.update(float(episode.success))
            self.mean_return.update(episode.total_return)
            self.crash_rate.update(float(episode.crashed))
            self.invalid_choice_rate.update(episode.invalid_choices / max(episode.length, 1))
            self.mean_length.update(float(episode.length))
        self.episodes.update(float(len(episodes)))

    def compute(self) -> dict[str, float]:
        values = {name: float(getattr(self, name).compute()) for name in EPISODE_METRICS}
        values["episodes"] = int(self.episodes.compute())
        return values

    def reset(self) -> None:
        for name in (*EPISODE_METRICS, "episodes"):
            getattr(self, name).reset()


class EpisodeMetrics(nn.Module):
    """StageMetrics keyed by stage name, created on first sight of a stage."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleDict()

    def update(self, stage: str, episodes: list[Episode]) -> None:
        if stage not in self.stages:
            device = next(iter(self.buffers()), torch.empty(0)).device
            self.stages[stage] = StageMetrics().to(device)
        self.stages[stage].update(episodes)

    def compute(self) -> dict[str, dict[str, float]]:
        return {stage: metrics.compute() for stage, metrics in self.stages.items()}

    def reset(self) -> None:
        for metrics in self.stages.values():
            metrics.reset()


def write_results(path: str | Path, env_id: str, per_stage: dict[str, dict[str, Any]], extra: dict[str, Any]) -> Path:
    """Write ``[{"env", "stage", "episodes", "success_rate", ...}, ...]`` atomically.

    Rows written by an evaluation also say what they cover: ``split``, the ``seeds`` range and
    the number of ``distinct_starts`` among them. Beside it, ``environment.json`` records the CPU and
    package versions the figures were measured with (:mod:`reflectrl.provenance`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"env": env_id, "stage": stage, **values, **extra} for stage, values in per_stage.items()]
    for target, content in ((path.with_name("environment.json"), environment()), (path, rows)):
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(content, indent=2) + "\n")
        os.replace(tmp, target)
    return path
