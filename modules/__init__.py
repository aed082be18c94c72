"""LightningModules (installed as ``reflectrl.modules``). They know no specific environment."""

from reflectrl.modules.base import LMModule
from reflectrl.modules.policy_sft import PolicySFTModule
from reflectrl.modules.reflection_sft import ReflectionSFTModule

__all__ = ["LMModule", "PolicySFTModule", "ReflectionSFTModule"]
