"""LightningModules (installed as ``reflectrl.modules``). They know no specific environment."""

from reflectrl.modules.base import LMModule
from reflectrl.modules.curriculum import CurriculumCallback
from reflectrl.modules.policy_sft import PolicySFTModule
from reflectrl.modules.prompted import PromptedAgentModule
from reflectrl.modules.reflection_sft import ReflectionSFTModule
from reflectrl.modules.rlft import RLFTModule, RLSettings

__all__ = ["CurriculumCallback", "LMModule", "PolicySFTModule", "PromptedAgentModule", "RLFTModule", "RLSettings", "ReflectionSFTModule"]
