"""CurriculumCallback: easy stages first (Taxi: pickup -> dropoff -> full).

The callback owns the stage. Its state is primitives only, restored by Lightning before
``on_train_start``, which is where it pushes the stage into the DataModule (lightning-notes P6):
the rollout stream reads the stage lazily, so a switch applies to the very next batch.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import lightning.pytorch as pl

from reflectrl.errors import ReflectRLError

CALLBACK_KEY = "trainer.callbacks (CurriculumCallback)"


class CurriculumCallback(pl.Callback):
    """Advance through ``stages`` on a fixed schedule or when the stage's success passes a bar."""

    def __init__(
        self,
        stages: list[str] | None = None,
        mode: str = "threshold",
        schedule: list[int] | None = None,
        thresholds: list[float] | None = None,
        window: int = 128,
        min_rollouts: int = 4,
    ) -> None:
        """
        Args:
            stages: stage names in order (default: pickup, dropoff, full).
            mode: "schedule" (advance after ``schedule[i]`` rollout batches in stage i, the
                paper) or "threshold" (advance when the success rate over the stage's last
                ``window`` training episodes reaches ``thresholds[i]``, checked from the
                stage's ``min_rollouts``-th batch on: until the stage has played ``window``
                episodes, the rate covers all of them).
            schedule: rollout batches spent in each stage but the last.
            thresholds: success rate needed to leave each stage but the last.
            window: most training episodes in the rolling success rate.
            min_rollouts: rollout batches a stage lasts at least (threshold mode); with
                ``episodes_per_batch``, they set the fewest episodes a rate is judged on.
        """
        self.stages = list(stages or ["pickup", "dropoff", "full"])
        self.mode = mode
        self.schedule = list(schedule or [])
        self.thresholds = list(thresholds or [0.9] * (len(self.stages) - 1))
        self.window = window
        self.min_rollouts = min_rollouts
        needed = len(self.stages) - 1
        problem = None
        if mode not in ("schedule", "threshold"):
            problem = f"mode must be 'schedule' or 'threshold', got {mode!r}"
        elif mode == "schedule" and (len(self.schedule) != needed or min(self.schedule, default=0) < 0):
            problem = f"schedule needs {needed} entries >= 0 (one per stage but the last), got {self.schedule}"
        elif mode == "threshold" and (len(self.thresholds) != needed or not all(0 <= t <= 1 for t in self.thresholds)):
            problem = f"thresholds needs {needed} entries in [0, 1] (one per stage but the last), got {self.thresholds}"
        elif window < 1 or min_rollouts < 1:
            problem = f"window and min_rollouts must be >= 1, got {window} and {min_rollouts}"
        if problem is not None:
            raise ReflectRLError(f"config key '{CALLBACK_KEY}': {problem}")
        self.stage_index = 0
        self.rollouts_in_stage = 0
        self.recent: deque[float] = deque(maxlen=window)

    @property
    def stage(self) -> str:
        return self.stages[self.stage_index]

    def _push(self, trainer: pl.Trainer) -> None:
        datamodule = trainer.datamodule
        if datamodule is not None and hasattr(datamodule, "stage"):
            datamodule.stage = self.stage

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # A stage the env does not know fails now, not when the schedule reaches it.
        check_stages = getattr(trainer.datamodule, "check_stages", None)
        if stage == "fit" and check_stages is not None:
            check_stages(self.stages, f"{CALLBACK_KEY}.stages")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._push(trainer)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not isinstance(outputs, dict) or "successes" not in outputs:
            return
        if outputs.get("stage") == self.stage:
            self.rollouts_in_stage += 1
            self.recent.extend(float(s) for s in outputs["successes"])
        rate = sum(self.recent) / len(self.recent) if self.recent else 0.0
        pl_module.log_dict(
            {"curriculum/stage_index": float(self.stage_index), "curriculum/success_rate": rate}, batch_size=1
        )
        if self.stage_index >= len(self.stages) - 1:
            return
        if self.mode == "schedule":
            advance = self.rollouts_in_stage >= self.schedule[self.stage_index]
        else:
            advance = self.rollouts_in_stage >= self.min_rollouts and rate >= self.thresholds[self.stage_index]
        if advance:
            self.stage_index += 1
            self.rollouts_in_stage = 0
            self.recent.clear()
            self._push(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"stage_index": self.stage_index, "rollouts_in_stage": self.rollouts_in_stage, "recent": list(self.recent)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stage_index = int(state_dict["stage_index"])
        self.rollouts_in_stage = int(state_dict["rollouts_in_stage"])
        self.recent = deque((float(x) for x in state_dict["recent"]), maxlen=self.window)
