"""SFT data: JSONL decision records (written by ``reflectrl generate``) in batches of dicts.

Batches are lists of raw records; the LightningModule builds prompts with
``reflectrl.prompts`` and tokenises them itself, so the prompt builder stays the one place that
makes text and this DataModule needs no tokenizer.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Sampler

from reflectrl.data import PLAIN_FIELDS, POLICY_FIELDS, REFLECTION_FIELDS, read_jsonl
from reflectrl.datamodules.episodes import EnvEvalConfig, EpisodeBatches
from reflectrl.errors import ReflectRLError

RecordKind = Literal["reflection", "policy", "plain"]
_SCHEMAS = {"reflection": REFLECTION_FIELDS, "policy": POLICY_FIELDS, "plain": PLAIN_FIELDS}

# Lightning warns on every mid-epoch resume of a loader without state_dict that results may be
# unreliable; this one continues the epoch exactly (EpochShuffle.resume_at, tests/test_sft.py).
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


def _keep_records(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


class EpochShuffle(Sampler[int]):
    """The training order of epoch e, derived from (seed, epoch) alone.

    It is the order a shuffling ``DataLoader`` with a generator seeded with ``seed`` gives an
    uninterrupted run in its epoch e (each epoch, that loader draws its iterator's base seed,
    the permutation and an empty remainder), so runs measured before this sampler keep their
    data order. Lightning calls ``set_epoch`` at every epoch start, also after a resume, so a
    resumed run shuffles its epoch as the uninterrupted run did (a fresh shuffling loader would
    start again from epoch 0's order). A run resumed in the middle of epoch e continues it:
    :meth:`resume_at` makes the epoch's order start after the records already trained on
    (Lightning counts the epoch's finished batches and ends it at the epoch's length).
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, records already trained on)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, records_done: int) -> None:
        """Epoch ``epoch`` leaves out its first ``records_done`` records (a mid-epoch resume)."""
        self._resume = (epoch, records_done) if records_done > 0 else None

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epoch):
            # an earlier epoch: the loader's base seed, the order, and the empty remainder
            # (``randperm(n)[:0]``) that torch's RandomSampler draws when it is exhausted
            torch.empty((), dtype=torch.int64).random_(generator=generator)
            torch.randperm(self.size, generator=generator)
            torch.randperm(self.size, generator=generator)
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        order = torch.randperm(self.size, generator=generator).tolist()
        skip = self._resume[1] if self._resume is not None and self._resume[0] == self.epoch else 0
        yield from order[skip:]

    def __len__(self) -> int:
        # The full epoch: Lightning sizes epochs by it and stops a resumed one at the same end.
        return self.size


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
            seed: seed of the shuffling order, independent of the global RNG and derived per
                epoch (:class:`EpochShuffle`), so a resumed run shuffles as the uninterrupted one.
            evaluation: when set, ``test`` plays environment episodes instead of scoring records.
        """
        super().__init__()
        self.train_file = train_file
        self.val_file = val_file
        self.test_file = test_file
        self.record_kind = record_kind
        self.batch_size = batch_size
        if batch_size < 1:
            raise ReflectRLError(f"config key 'data.init_args.batch_size': must be >= 1, got {batch_size}")
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
            if self.evaluation is not None:  # played by `test` after fit (evaluate_after_fit)
                EpisodeBatches(self.evaluation).check()
        elif stage == "validate":
            self._load("val", self.val_file)
        elif stage == "test" and self.evaluation is None:
            self._load("test", self.test_file)

    def _loader(self, records: list[dict[str, Any]], shuffle: bool) -> DataLoader:
        return DataLoader(
            records,  # type: ignore[arg-type]
            batch_size=self.batch_size,
            sampler=EpochShuffle(len(records), self.seed) if shuffle else None,
            # The loader draws a base seed per epoch (for workers; none here): from a private
            # generator, as before, so the global RNG sees the same draws.
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            collate_fn=_keep_records,
            num_workers=0,
        )

    def train_dataloader(self) -> DataLoader:
        loader = self._loader(self._load("train", self.train_file), shuffle=True)
        trainer = getattr(self, "trainer", None)
        if trainer is not None and isinstance(loader.sampler, EpochShuffle):
            # On a resume the loops' progress is restored before the loader is made: continue
            # the epoch after its finished batches instead of replaying it from the start.
            batches = len(loader)
            # "processed": a checkpoint saved in on_train_batch_end has not marked its batch
            # "completed" yet; Lightning resumes after the processed ones as well.
            done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
            if batches and done % batches:
                loader.sampler.resume_at(trainer.current_epoch, (done % batches) * self.batch_size)
        return loader

    def val_dataloader(self) -> DataLoader | list:
        records = self._load("val", self.val_file)
        return self._loader(records, shuffle=False) if records else []

    def test_dataloader(self) -> DataLoader | EpisodeBatches:
        if self.evaluation is not None:
            return EpisodeBatches(self.evaluation)
        if self.test_file is None:
            raise ReflectRLError(
                "config key 'data.init_args.test_file' or 'data.init_args.evaluation': one must be set for `test`"
            )
        return self._loader(self._load("test", self.test_file), shuffle=False)
