"""Success of trained Taxi players over the distinct held-out start states, each played once.

    python -m benchmarks.taxi_distinct_starts                     # SFT and RL policies of the pipeline
    python -m benchmarks.taxi_distinct_starts --policy DIR [--policy DIR ...] --reflector DIR

The ``test`` evaluation plays 500 seeded episodes per stage, and the seeds draw their starts
from the split's 60 held-out start states (some many times), so its figure is a weighted
average. This plays every start of the split once per stage (greedy, both players, the acting
settings of ``configs/taxi_rlft.yaml``) and prints how many succeed. Given two policies it also
prints the largest weight difference between them (did RL change the policy at all?).
"""

from __future__ import annotations

import argparse

import gymnasium
import torch
from safetensors.torch import load_file

from benchmarks import acting_settings
from reflectrl.backbone import BackboneConfig
from reflectrl.envs.taxi import start_states
from reflectrl.modules.rlft import RLFTModule
from reflectrl.rollout import play_episodes


def solved_starts(policy: str, reflector: str, stage: str, split: str) -> tuple[int, int]:
    """(starts solved, starts) of ``stage`` in ``split``, each start played once."""
    module = RLFTModule(
        backbone=BackboneConfig(name_or_path=policy),
        reflector=BackboneConfig(name_or_path=reflector),
        acting=acting_settings(),
    ).eval()
    agent = module.agent(evaluation=True)
    starts = start_states(stage, split)
    envs = [gymnasium.make("reflectrl/DangerousTaxi-v0") for _ in starts]
    solved = 0
    with torch.no_grad():
        for env, start in zip(envs, starts, strict=True):
            options = {"stage": stage, "split": split, "start_state": start}
            (episode,) = play_episodes([env], [0], options, agent.decide)
            solved += episode.success
    return solved, len(starts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", action="append", help="policy export folder (repeatable)")
    parser.add_argument("--reflector", default="runs/taxi/models/reflection")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    policies = args.policy or ["runs/taxi/models/policy", "runs/taxi/models/rlft_policy"]
    torch.set_num_threads(1)
    for policy in policies:
        for stage in ("pickup", "full"):
            solved, total = solved_starts(policy, args.reflector, stage, args.split)
            print(f"{policy} {stage}: {solved}/{total} {args.split} starts solved ({solved / total:.1%})")
    if len(policies) == 2:
        first, second = (load_file(f"{policy}/model.safetensors") for policy in policies)
        largest = max(float((first[k].float() - second[k].float()).abs().max()) for k in first)
        print(f"largest weight difference between the two policies: {largest:.4f}")


if __name__ == "__main__":
    main()
