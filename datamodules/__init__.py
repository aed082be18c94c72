"""LightningDataModules (installed as ``reflectrl.datamodules``)."""

from reflectrl.datamodules.episodes import EnvEvalConfig, EpisodeBatch, EpisodeBatches
from reflectrl.datamodules.online import OnlineEnvDataModule, RolloutRequest
from reflectrl.datamodules.sft import SFTDataModule

__all__ = ["EnvEvalConfig", "EpisodeBatch", "EpisodeBatches", "OnlineEnvDataModule", "RolloutRequest", "SFTDataModule"]
