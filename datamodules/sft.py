"""SFT data: JSONL decision records (written by ``reflectrl generate``) in batches of dicts.

Batches are lists of raw records; the LightningModule builds prompts with
``reflectrl.prompts`` and tokenises them itself, so the prompt builder stays the one place that
makes text and this DataModule needs no tokenizer.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from reflectrl.data import PLAIN_FIELDS, POLICY_FIELDS, REFLECTION_FIELDS, read_jsonl
from reflectrl.datamodules.episodes import EnvEvalConfig, EpisodeBatches

RecordKind = Literal["reflection", "policy", "plain"]
_SCHEMAS = {"reflection": REFLECTION_FIELDS, "policy": POLICY_FIELDS, "plain": PLAIN_FIELDS}


def _keep_records(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


class SFTDataModule(pl.LightningDataModule):
    """JSONL records for reflection or policy SFT, plus optional environment evaluation episodes."""

    def __init__(
        self,
        train_file: str,
        val_file: str | None = None,
        test_file: str | None = None,
        record_kind: RecordKind = "policy",
        batch_size: int = 32,
        seed: int = 0,
        evaluation: EnvEvalConfig | None = None,
    ) -> None:
        """
        Args:
            train_file: JSONL training records.
            val_file: JSONL validation records (None: no validation).
            test_file: JSONL test records, used by ``test`` when ``evaluation`` is not set.
            record_kind: schema of the records: "reflection", "policy" or "plain" (policy
                records without reflections).
            batch_size: records per optimisation step.
            seed: seed of the shuffling order (independent of the global RNG, so a resumed run
                sees the same order).
            evaluation: when set, ``test`` plays environment episodes instead of scoring records.
        """
        super().__init__()
        self.train_file = train_file
        self.val_file = val_file
        self.test_file = test_file
        self.record_kind = record_kind
        self.batch_size = batch_size
        self.seed = seed
        self.evaluation = evaluation
        self._records: dict[str, list[dict[str, Any]]] = {}

    def _load(self, split: str, path: str | None) -> list[dict[str, Any]]:
        if path is None:
            return []
        if split not in self._records:
            self._records[split] = read_jsonl(path, _SCHEMAS[self.record_kind])
        return self._records[split]

    def setup(self, stage: str) -> None:
        # Read (and validate) every file the stage needs up front, so a malformed line fails
        # before any training time is spent.
        if stage == "fit":
            self._load("train", self.train_file)
            self._load("val", self.val_file)
        elif stage == "validate":
            self._load("val", self.val_file)
        elif stage == "test" and self.evaluation is None:
            self._load("test", self.test_file)

    def _loader(self, records: list[dict[str, Any]], shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            records,  # type: ignore[arg-type]
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator if shuffle else None,
            collate_fn=_keep_records,
            num_workers=0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._load("train", self.train_file), shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        records = self._load("val", self.val_file)
        return self._loader(records, shuffle=False) if records else []

    def test_dataloader(self) -> DataLoader | EpisodeBatches:
        if self.evaluation is not None:
            return EpisodeBatches(self.evaluation)
        if self.test_file is None:
            raise ValueError("data.init_args.test_file or data.init_args.evaluation must be set for `test`")
        return self._loader(self._load("test", self.test_file), shuffle=False)
