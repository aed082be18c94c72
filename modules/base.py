"""The base LightningModule: one trainable LM player, its optimiser, lean checkpoints, export.

Subclasses (one level only): ReflectionSFTModule, PolicySFTModule, RLFTModule. They add the
loss, the metrics and, for the players that act, environment evaluation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only

from reflectrl.agent import ActingSettings
from reflectrl.backbone import BackboneConfig, LoraSettings, build_backbone, export_backbone, replace_config
from reflectrl.errors import ReflectRLError
from reflectrl.lm import max_positions

log = logging.getLogger("reflectrl")
TOKENIZER_KEY = "reflectrl_tokenizer_sha256"
MODULE_KEY = "reflectrl_module"
"""Checkpoint entry naming the module class that wrote it (checked on load)."""


def as_backbone_config(value: BackboneConfig | dict[str, Any] | None) -> BackboneConfig | None:
    """Accept a BackboneConfig or its dict form (hparams from a checkpoint are plain dicts)."""
    if value is None or isinstance(value, BackboneConfig):
        return value
    values = dict(value)
    if isinstance(values.get("lora"), dict):
        values["lora"] = LoraSettings(**values["lora"])
    return BackboneConfig(**values)


def build_frozen_player(config: BackboneConfig, device: torch.device) -> tuple[Any, Any]:
    """A player that acts but is never trained (the reflector): frozen, on ``device``.

    Callers keep it outside the module tree, so it is neither optimised nor checkpointed.
    """
    model, tokenizer = build_backbone(replace_config(config, trainable=False))
    return model.to(device), tokenizer


def _plain(value: Any) -> Any:
    """Dataclasses to dicts, recursively: checkpoints must hold primitives only (weights_only)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    return value


class LMModule(pl.LightningModule):
    """Base of every reflectrl LightningModule.

    Checkpoints hold only the parameters that are trained (``requires_grad``): frozen bases and
    the frozen reflection player are rebuilt from their configs, so a LoRA run's checkpoint is
    megabytes, not gigabytes. ``export_dir`` receives a ``save_pretrained`` copy of the trained
    player at the end of ``fit``, which later stages load by path.
    """

    def __init__(
        self,
        backbone: BackboneConfig,
        lr: float = 3e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 20,
        min_lr_ratio: float = 0.1,
        export_dir: str | None = None,
    ) -> None:
        """
        Args:
            backbone: the trainable player's model (tiny default or any Hugging Face model).
            lr: peak AdamW learning rate.
            weight_decay: AdamW weight decay.
            warmup_steps: linear warm-up steps, then cosine decay to ``min_lr_ratio * lr``.
            min_lr_ratio: final learning rate as a fraction of ``lr``.
            export_dir: folder for a ``save_pretrained`` export of the trained player at the end
                of ``fit`` (None: no export).
        """
        super().__init__()
        if not lr > 0 or weight_decay < 0:
            key, value = ("lr", lr) if not lr > 0 else ("weight_decay", weight_decay)
            raise ReflectRLError(f"config key 'model.init_args.{key}': must be {'> 0' if key == 'lr' else '>= 0'}, got {value}")
        self.save_hyperparameters()
        for store in (self._hparams, self._hparams_initial):
            for key in list(store):
                store[key] = _plain(store[key])
        self.backbone_config = as_backbone_config(backbone)
        self.model, self.tokenizer = build_backbone(self.backbone_config)
        self.model.train(self.backbone_config.trainable)  # from_pretrained returns eval mode
        # Frozen weights are left out of checkpoints, so loading must tolerate their absence;
        # on_load_checkpoint checks that every *trained* weight is present instead.
        self.strict_loading = False

    def prompt_limit(self, limit: int, key: str) -> int:
        """``limit`` capped at the model's positions (prompts are cut from the left to fit it):
        past them GPT-2 fails mid-run with an IndexError and Llama silently leaves its range."""
        positions = max_positions(self.model)
        if positions is not None and limit > positions:
            log.info("%s: %d tokens is more than the model's %d positions: using %d", key, limit, positions, positions)
            return positions
        return limit

    def acting_within_positions(self, acting: ActingSettings) -> ActingSettings:
        """``acting`` with its ``max_prompt_tokens`` capped by :meth:`prompt_limit`."""
        limit = self.prompt_limit(acting.max_prompt_tokens, "model.init_args.acting.max_prompt_tokens")
        return dataclasses.replace(acting, max_prompt_tokens=limit)

    # ------------------------------------------------------------------ optimisation
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(
            self.trainable_parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = min(self.hparams.warmup_steps, total)
        floor = self.hparams.min_lr_ratio

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Before the step (the scheduler steps after it): the rate this batch trains with.
        if self.trainer.optimizers:
            self.log("charts/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=1)

    # ------------------------------------------------------------------ checkpoints
    def _trained_keys(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def tokenizer_fingerprint(self) -> str:
        """sha256 of the tokenizer's full definition: a tokenizer trained from a corpus is
        rebuilt on resume, and must come out the same as the one the weights were trained with."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        text = backend.to_str() if backend is not None else repr(sorted(self.tokenizer.get_vocab().items()))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trained = self._trained_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trained}
        checkpoint[TOKENIZER_KEY] = self.tokenizer_fingerprint()
        checkpoint[MODULE_KEY] = type(self).__name__

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        writer = checkpoint.get(MODULE_KEY)
        if writer is not None and writer != type(self).__name__:
            raise ReflectRLError(
                f"checkpoint was written by {writer}, but this config builds {type(self).__name__}: "
                "pass a checkpoint of this stage"
            )
        saved = checkpoint.get(TOKENIZER_KEY)
        if saved is not None and saved != self.tokenizer_fingerprint():
            raise ReflectRLError(
                "checkpoint was trained with a different tokenizer than this config builds "
                "(was the tokenizer_corpus regenerated or changed?)"
            )
        state = checkpoint.get("state_dict", {})
        missing = sorted(self._trained_keys() - set(state))
        if missing:
            raise ReflectRLError(
                f"checkpoint does not hold {len(missing)} trained weights of this model (e.g. '{missing[0]}'): "
                "was it written by a different model config?"
            )
        # strict_loading is off (frozen weights are absent), so Lightning would silently drop
        # weights this model lacks and report a shape mismatch as a multi-line RuntimeError.
        own = self.state_dict()
        unexpected = sorted(set(state) - set(own))
        if unexpected:
            raise ReflectRLError(
                f"checkpoint holds {len(unexpected)} weights this model does not have (e.g. '{unexpected[0]}'): "
                "was it written by a different model config?"
            )
        for key in sorted(state):
            if tuple(state[key].shape) != tuple(own[key].shape):
                raise ReflectRLError(
                    f"checkpoint weight '{key}' has shape {tuple(state[key].shape)}, this model's "
                    f"{tuple(own[key].shape)}: was it written by a different model config?"
                )

    @rank_zero_only
    def export(self) -> None:
        if self.hparams.export_dir:
            export_backbone(self.model, self.tokenizer, self.hparams.export_dir)
            log.info("exported the trained player to %s", self.hparams.export_dir)

    def on_fit_start(self) -> None:
        config = self.backbone_config
        from_gguf = bool(config.gguf_file) or str(config.name_or_path or "").endswith(".gguf")
        if from_gguf and config.trainable and config.lora is None and self.hparams.export_dir:
            # transformers marks a dequantised GGUF model as quantised and refuses to save it: the
            # export would fail after all the training.
            raise ReflectRLError(
                "config key 'model.init_args.backbone': a GGUF model cannot be exported after a full "
                "fine-tune (transformers refuses to save it); set backbone.lora"
            )

    def on_fit_end(self) -> None:
        # fast_dev_run is a smoke test that writes nothing (Lightning skips checkpoints and logs);
        # exporting would replace a real export with a one-step model.
        if not self.trainer.fast_dev_run:
            self.export()
