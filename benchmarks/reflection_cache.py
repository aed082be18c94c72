"""RL iteration time with vs without the frozen-reflection cache, measured in one run.

    python -m benchmarks.reflection_cache                       # the trained Taxi players
    python -m benchmarks.reflection_cache --reflection DIR --policy DIR --episodes 32

Runs RLFT iterations (rollout + REINFORCE update) on DangerousTaxi twice with the same seeds:
once with the reflection cache, once without. Both runs make exactly the same decisions (a greedy
frozen reflector returns the same text from the cache as from generation), so the difference is
the reflector's decoding alone. The first ``--warmup`` iterations fill the cache and are not
timed. Defaults: the players the Taxi pipeline exports (``runs/taxi/models/{reflection,policy}``),
or freshly initialised tiny players when those do not exist (their reflections are noise, which
makes the comparison pessimistic: noise runs to the length limit and rarely repeats).
Target (issue 3): >= 5x faster iterations after warm-up.

``--reflector-layers L --reflector-width W`` replaces the reflection player by a freshly
initialised GPT-2 of that size (byte tokenizer; the trained policy stays): the paper's players are
both GPT-2 XL, where writing a ~100-token reflection costs far more than the policy's update,
while the tiny default reflector decodes its ~40 tokens for 32 episodes in about a second. An
untrained reflector writes noise up to ``reflection_max_tokens`` (96), i.e. the full decoding
cost, at every uncached step; the cache key is the observation, so the hit rate depends only on
how often states repeat.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from benchmarks import acting_settings
from reflectrl.backbone import BackboneConfig, build_backbone, export_backbone
from reflectrl.datamodules.online import OnlineEnvDataModule
from reflectrl.modules.rlft import RLFTModule


class IterationTimer(pl.Callback):
    """Wall time of every training step (one rollout batch + its update) and of its rollout."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.rollout_times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, *args: object) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, module: RLFTModule, *args: object) -> None:
        self.times.append(time.perf_counter() - self._start)
        self.rollout_times.append(module.last_rollout.seconds if module.last_rollout is not None else 0.0)


def run(cache_size: int, reflection: str, policy: str, args: argparse.Namespace) -> tuple[float, float, float]:
    """Mean timed iteration seconds, mean rollout seconds, final cache hit rate (0 without)."""
    pl.seed_everything(0, verbose=False)
    module = RLFTModule(
        backbone=BackboneConfig(name_or_path=policy),
        reflector=BackboneConfig(name_or_path=reflection),
        acting=acting_settings(),
        reflection_cache_size=cache_size,
    )
    data = OnlineEnvDataModule(stage=args.stage, split="train", episodes_per_batch=args.episodes, seed=0)
    timer = IterationTimer()
    steps = args.warmup + args.iterations
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=steps, limit_train_batches=steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, callbacks=[timer],
    )
    trainer.fit(module, datamodule=data)
    measured = timer.times[args.warmup :]
    rollouts = timer.rollout_times[args.warmup :]
    hit_rate = module.cache.hit_rate() if module.cache is not None else 0.0
    return sum(measured) / len(measured), sum(rollouts) / len(rollouts), hit_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reflection", default="runs/taxi/models/reflection")
    parser.add_argument("--policy", default="runs/taxi/models/policy")
    parser.add_argument("--stage", default="pickup")
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=20, help="untimed iterations that fill the cache")
    parser.add_argument("--episodes", type=int, default=32, help="episodes per iteration")
    parser.add_argument("--reflector-layers", type=int, help="a fresh reflector of this many layers ...")
    parser.add_argument("--reflector-width", type=int, default=512, help="... and this width (with --reflector-layers)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        reflection, policy = args.reflection, args.policy
        if not (Path(reflection).is_dir() and Path(policy).is_dir()):
            print(f"{reflection} or {policy} missing: using freshly initialised tiny players")
            for name, seed in (("reflection", 0), ("policy", 1)):
                model, tokenizer = build_backbone(BackboneConfig(num_layers=3, hidden_size=128, num_heads=4, max_positions=512, init_seed=seed))
                export_backbone(model, tokenizer, f"{folder}/{name}")
            reflection, policy = f"{folder}/reflection", f"{folder}/policy"
        if args.reflector_layers is not None:  # after the fallback, which would replace it
            model, tokenizer = build_backbone(BackboneConfig(
                num_layers=args.reflector_layers, hidden_size=args.reflector_width,
                num_heads=max(1, args.reflector_width // 64), max_positions=1024, init_seed=0,
            ))
            reflection = f"{folder}/large_reflection"
            export_backbone(model, tokenizer, reflection)
            print(f"reflector: fresh GPT-2, {args.reflector_layers} layers x {args.reflector_width} "
                  f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")
        cached, cached_rollout, hit_rate = run(50_000, reflection, policy, args)
        uncached, uncached_rollout, _ = run(0, reflection, policy, args)
    print(f"threads {torch.get_num_threads()}, {args.episodes} episodes/iteration, {args.warmup} warm-up iterations")
    print(f"iteration time with cache {cached:.2f}s (hit rate {hit_rate:.0%}), without {uncached:.2f}s: "
          f"speed-up {uncached / cached:.2f}x (target 5x)")
    print(f"rollout phase alone: with cache {cached_rollout:.2f}s, without {uncached_rollout:.2f}s: "
          f"speed-up {uncached_rollout / cached_rollout:.2f}x")


if __name__ == "__main__":
    main()
