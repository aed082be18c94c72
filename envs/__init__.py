"""Gymnasium text environments of reflectrl (installed as ``reflectrl.envs``).

Importing this package registers the environments with gymnasium, so that e.g.
``gymnasium.make("reflectrl/DangerousTaxi-v0", stage="pickup")`` works; the privileged oracle
stays reachable through ``env.unwrapped``.
"""

from gymnasium.envs.registration import register, registry

from .alfworld import ENV_ID as ALFWORLD_ENV_ID
from .alfworld import ALFWorldEnv
from .autoexplore import ENV_ID as AUTOEXPLORE_ENV_ID
from .autoexplore import AutoExploreEnv
from .taxi import ENV_ID as TAXI_ENV_ID
from .taxi import DangerousTaxiEnv

# Idempotent: re-importing (or reloading) this module must not re-register (gymnasium warns).
# No max_episode_steps: the envs truncate themselves at their own `horizon`.
if TAXI_ENV_ID not in registry:
    register(id=TAXI_ENV_ID, entry_point="reflectrl.envs.taxi:DangerousTaxiEnv")
if ALFWORLD_ENV_ID not in registry:
    # alfworld itself is imported only when an ALFWorldEnv is made (an optional extra).
    register(id=ALFWORLD_ENV_ID, entry_point="reflectrl.envs.alfworld:ALFWorldEnv")
if AUTOEXPLORE_ENV_ID not in registry:
    register(id=AUTOEXPLORE_ENV_ID, entry_point="reflectrl.envs.autoexplore:AutoExploreEnv")

__all__ = ["ALFWORLD_ENV_ID", "AUTOEXPLORE_ENV_ID", "ALFWorldEnv", "TAXI_ENV_ID", "AutoExploreEnv", "DangerousTaxiEnv"]
