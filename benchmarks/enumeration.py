"""Decision throughput: single-prompt action enumeration vs SayCan-style per-action scoring.

    python -m benchmarks.enumeration

Both score the same policy prompts of real DangerousTaxi states (6 actions) and of synthetic
12-action lists with the same model; prints decisions/s of each and the ratio, measured in one
run. Target (issue 3): ratio >= 0.8 x |A|.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import torch

import reflectrl.envs  # noqa: F401
from reflectrl import prompts
from reflectrl.backbone import BackboneConfig, build_backbone
from reflectrl.lm import choice_log_probs, choice_log_probs_per_action, encode_choice_batch


def taxi_prompts(count: int) -> tuple[list[str], list[int]]:
    env = gym.make("reflectrl/DangerousTaxi-v0")
    texts, sizes = [], []
    for seed in range(count):
        observation, info = env.reset(seed=seed)
        reflection = "The passenger waits two rows down; a wall is east. Head south."
        texts.append(prompts.policy_prompt(observation, reflection, info["valid_actions"]))
        sizes.append(len(info["valid_actions"]))
    return texts, sizes


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--states", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1, help="decisions per forward (1 = one agent acting)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = build_backbone(BackboneConfig(num_layers=3, hidden_size=128, num_heads=4, max_positions=1024))
    model.eval()
    base_texts, _ = taxi_prompts(args.states)
    cases = {"taxi (|A|=6)": (base_texts, [6] * len(base_texts))}
    many = [f"{t.split('Actions:')[0]}Actions:\n" + "".join(f"{i + 1}. go to room {i}\n" for i in range(12)) + prompts.ACTION_MARKER for t in base_texts]
    cases["synthetic (|A|=12)"] = (many, [12] * len(many))
    print(f"{'case':<20} {'enumeration dec/s':>18} {'per-action dec/s':>17} {'ratio':>7} {'target 0.8|A|':>13}")
    with torch.no_grad():
        for name, (texts, sizes) in cases.items():
            def enumerate_all(texts: list[str] = texts, sizes: list[int] = sizes) -> None:
                for i in range(0, len(texts), args.batch):
                    batch = encode_choice_batch(tokenizer, texts[i : i + args.batch], sizes[i : i + args.batch])
                    choice_log_probs(model, batch)

            def per_action(texts: list[str] = texts, sizes: list[int] = sizes) -> None:
                for i in range(0, len(texts), args.batch):
                    choice_log_probs_per_action(model, tokenizer, texts[i : i + args.batch], sizes[i : i + args.batch])

            fast = len(texts) / timed(enumerate_all, args.repeats)
            slow = len(texts) / timed(per_action, args.repeats)
            print(f"{name:<20} {fast:>18.1f} {slow:>17.1f} {fast / slow:>7.2f} {0.8 * sizes[0]:>13.1f}")


if __name__ == "__main__":
    main()
