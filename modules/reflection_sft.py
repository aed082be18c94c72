"""Reflection SFT: teach the reflection player to write the teacher's analysis of a state."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import MeanMetric

from reflectrl import prompts
from reflectrl.backbone import BackboneConfig
from reflectrl.lm import completion_nll
from reflectrl.modules.base import LMModule


class ReflectionSFTModule(LMModule):
    """Completion-only NLL of the reflection given the state (prompt tokens carry no loss)."""

    def __init__(
        self,
        backbone: BackboneConfig,
        max_prompt_tokens: int = 768,
        lr: float = 3e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 20,
        min_lr_ratio: float = 0.1,
        export_dir: str | None = None,
    ) -> None:
        """
        Args:
            backbone: the reflection player's model.
            max_prompt_tokens: prompt + reflection longer than this is cut from the left.
            lr, weight_decay, warmup_steps, min_lr_ratio, export_dir: see LMModule.
        """
        super().__init__(backbone, lr, weight_decay, warmup_steps, min_lr_ratio, export_dir)
        self.max_prompt_tokens = self.prompt_limit(max_prompt_tokens, "model.init_args.max_prompt_tokens")
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()

    def _loss(self, records: list[dict[str, Any]]) -> torch.Tensor:
        inputs = [prompts.reflection_prompt(r["observation"]) for r in records]
        targets = [prompts.sanitize_line(r["reflection"]) for r in records]
        return completion_nll(self.model, self.tokenizer, inputs, targets, max_length=self.max_prompt_tokens)

    def training_step(self, batch: list[dict[str, Any]], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch).mean()
        self.log("train/reflection_loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        self.val_loss.update(self._loss(batch))
        self.log("val/reflection_loss", self.val_loss, prog_bar=True, batch_size=len(batch))

    def test_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        self.test_loss.update(self._loss(batch))
        self.log("test/reflection_loss", self.test_loss, batch_size=len(batch))
