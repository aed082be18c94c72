"""How trained ALFWorld players win and lose: their greedy episodes, printed one line each.

    python -m benchmarks.alfworld_episodes [--policy runs/alfworld/models/rlft_policy]
        [--reflection runs/alfworld/models/reflection] [--split valid_unseen] [--episodes 20]

Plays ``--episodes`` seeded episodes (seeds 100000, 100001, ...) of the paper's family
(``pick_and_place_simple-Tomato-Microwave``) with both players acting as in the ALFWorld configs
(greedy reflection of at most 64 tokens, the command's text as the label), ten envs stepped
together. Each episode prints WIN/FAIL, its length and its commands; a failure also prints its
task line and the last reflection. The README's "Why the expert matters" comes from this.
"""

from __future__ import annotations

import argparse

import gymnasium
import torch

import reflectrl.envs  # noqa: F401  (registers the envs)
from benchmarks import acting_settings
from reflectrl.agent import ActingSettings, TwoPlayerAgent
from reflectrl.backbone import BackboneConfig
from reflectrl.envs.alfworld import ENV_ID, PAPER_STAGE
from reflectrl.modules.base import build_frozen_player
from reflectrl.rollout import play_episodes

BATCH = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default="runs/alfworld/models/rlft_policy")
    parser.add_argument("--reflection", default="runs/alfworld/models/reflection")
    parser.add_argument("--data-root", default="data/alfworld_games")
    parser.add_argument("--split", default="valid_unseen")
    parser.add_argument("--episodes", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the configs' cpu_threads: 1
    device = torch.device("cpu")
    policy, policy_tokenizer = build_frozen_player(BackboneConfig(name_or_path=args.policy), device)
    reflector, reflector_tokenizer = build_frozen_player(BackboneConfig(name_or_path=args.reflection), device)
    settings = ActingSettings(**acting_settings("alfworld_rlft.yaml"))
    agent = TwoPlayerAgent(policy, policy_tokenizer, reflector, reflector_tokenizer, settings)
    envs = [gymnasium.make(ENV_ID, data_root=args.data_root, horizon=30) for _ in range(BATCH)]
    wins = 0
    for start in range(0, args.episodes, BATCH):
        seeds = [100000 + start + i for i in range(min(BATCH, args.episodes - start))]
        options = {"stage": PAPER_STAGE, "split": args.split}
        for episode in play_episodes(envs[: len(seeds)], seeds, options, agent.decide):
            wins += episode.success
            commands = [t.valid_actions[t.decision.action] for t in episode.transitions]
            print("WIN " if episode.success else "FAIL", episode.length, " | ".join(commands))
            if not episode.success:
                last = episode.transitions[-1]
                print("   ", last.observation.splitlines()[0], "| last reflection:", last.decision.extra["reflection"])
    print(f"success {wins}/{args.episodes}")


if __name__ == "__main__":
    main()
