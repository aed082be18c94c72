"""Policy SFT: teach the policy player to choose the teacher's action from the enumerated list."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from reflectrl.agent import ActingSettings, TwoPlayerAgent
from reflectrl.backbone import BackboneConfig
from reflectrl.datamodules.episodes import EpisodeBatch
from reflectrl.errors import ReflectRLError
from reflectrl.modules.base import LMModule, as_backbone_config, build_frozen_player
from reflectrl.modules.evaluation import EnvEvaluation


def choice_nll(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row NLL of the target choice under log-probs already masked to the valid labels."""
    return F.nll_loss(log_probs, targets, reduction="none")


class PolicySFTModule(LMModule):
    """NLL of the chosen action's label, scored over the valid labels only.

    ``test`` plays the environment with both players (the frozen reflection player is loaded
    from ``reflector``), giving the "SFT only" row of the paper's table.
    """

    def __init__(
        self,
        backbone: BackboneConfig,
        reflector: BackboneConfig | None = None,
        acting: ActingSettings | None = None,
        lr: float = 3e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 20,
        min_lr_ratio: float = 0.1,
        export_dir: str | None = None,
    ) -> None:
        """
        Args:
            backbone: the policy player's model.
            reflector: the frozen reflection player used when the policy acts in an environment
                (``test``); usually the reflection SFT export folder. Not needed when
                ``acting.reflect`` is false.
            acting: reflect or not (the "without reflection" baseline), reflection length,
                prompt length.
            lr, weight_decay, warmup_steps, min_lr_ratio, export_dir: see LMModule.
        """
        super().__init__(backbone, lr, weight_decay, warmup_steps, min_lr_ratio, export_dir)
        self.acting = acting if isinstance(acting, ActingSettings) else ActingSettings(**(acting or {}))
        self.acting = self.acting_within_positions(self.acting)
        self.reflector_config = as_backbone_config(reflector)
        self._reflector: tuple[Any, Any] | None = None
        # Choice metrics on held-out records, per phase: `validate`/`fit` log val/*, and `test`
        # on a records file (no env evaluation configured) logs test/*.
        self.record_metrics = nn.ModuleDict(
            {phase: nn.ModuleDict({name: MeanMetric() for name in ("loss", "accuracy", "optimal")})
             for phase in ("val", "test")}
        )
        self.evaluation = EnvEvaluation("test")

    # ------------------------------------------------------------------ SFT
    def _choice_log_probs(self, records: list[dict[str, Any]]) -> torch.Tensor:
        agent = self.agent(need_reflector=False)
        reflections = [r.get("reflection") if self.acting.reflect else None for r in records]
        texts = agent.policy_prompts([r["observation"] for r in records], reflections, [r["valid_actions"] for r in records])
        return agent.choice_log_probs(texts, [r["valid_actions"] for r in records])

    def training_step(self, batch: list[dict[str, Any]], batch_idx: int) -> torch.Tensor:
        targets = torch.tensor([r["action"] for r in batch], device=self.device)
        loss = choice_nll(self._choice_log_probs(batch), targets).mean()
        self.log("train/policy_loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        self._record_step(batch, "val")

    def _record_step(self, batch: list[dict[str, Any]], phase: str) -> None:
        """Loss, exact-label accuracy and optimal-choice rate of the policy on teacher records."""
        metrics = self.record_metrics[phase]
        log_probs = self._choice_log_probs(batch)
        targets = torch.tensor([r["action"] for r in batch], device=self.device)
        choices = log_probs.argmax(dim=-1)
        metrics["loss"].update(choice_nll(log_probs, targets))
        metrics["accuracy"].update((choices == targets).float())
        optimal = [c in r.get("optimal_actions", [r["action"]]) for c, r in zip(choices.tolist(), batch, strict=True)]
        metrics["optimal"].update(torch.tensor(optimal, dtype=torch.float, device=self.device))
        size = len(batch)
        self.log(f"{phase}/policy_loss", metrics["loss"], batch_size=size)
        self.log(f"{phase}/choice_accuracy", metrics["accuracy"], prog_bar=True, batch_size=size)
        self.log(f"{phase}/optimal_choice_rate", metrics["optimal"], batch_size=size)

    # ------------------------------------------------------------------ acting
    def agent(self, need_reflector: bool = True) -> TwoPlayerAgent:
        reflector, reflector_tokenizer = None, None
        if need_reflector and self.acting.reflect:
            if self._reflector is None:
                if self.reflector_config is None:
                    raise ReflectRLError(
                        "config key 'model.init_args.reflector': must be set to act with reflections"
                        " (acting.reflect is true)"
                    )
                self._reflector = build_frozen_player(self.reflector_config, self.device)
            reflector, reflector_tokenizer = self._reflector
        settings = self.acting if need_reflector else ActingSettings(**{**vars(self.acting), "reflect": False})
        return TwoPlayerAgent(self.model, self.tokenizer, reflector, reflector_tokenizer, settings)

    def test_step(self, batch: EpisodeBatch | list[dict[str, Any]], batch_idx: int) -> None:
        if isinstance(batch, EpisodeBatch):
            self.evaluation.play(batch, self.agent())
        else:
            self._record_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self.evaluation.finish(self, {"model": type(self).__name__, "reflect": self.acting.reflect})
