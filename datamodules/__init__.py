"""LightningDataModules (installed as ``reflectrl.datamodules``)."""

from reflectrl.datamodules.episodes import EnvEvalConfig, EpisodeBatch, EpisodeBatches
from reflectrl.datamodules.sft import SFTDataModule

__all__ = ["EnvEvalConfig", "EpisodeBatch", "EpisodeBatches", "SFTDataModule"]
