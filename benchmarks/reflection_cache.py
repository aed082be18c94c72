"""RL iteration time with vs without the frozen-reflection cache.

    python -m benchmarks.reflection_cache

Builds a tiny reflection + policy pair, runs a few RLFT rollout+update iterations on
DangerousTaxi with the cache on (after warm-up iterations that fill it) and off, and prints the
mean iteration time of each and the speed-up, measured in one run. Target (issue 3): >= 5x.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import lightning.pytorch as pl
import torch

from reflectrl.backbone import BackboneConfig, build_backbone, export_backbone
from reflectrl.datamodules.online import OnlineEnvDataModule
from reflectrl.modules.rlft import RLFTModule


class IterationTimer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, *args) -> None:  # noqa: ANN002
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:  # noqa: ANN002
        self.times.append(time.perf_counter() - self._start)


def run(cache_size: int, folder: str, iterations: int, warmup: int, episodes: int) -> float:
    pl.seed_everything(0, verbose=False)
    module = RLFTModule(
        backbone=BackboneConfig(name_or_path=f"{folder}/policy"),
        reflector=BackboneConfig(name_or_path=f"{folder}/reflection"),
        acting={"reflect": True, "reflection_max_tokens": 64, "max_prompt_tokens": 512},
        reflection_cache_size=cache_size,
    )
    data = OnlineEnvDataModule(stage="pickup", episodes_per_batch=episodes, seed=0)
    timer = IterationTimer()
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=warmup + iterations, limit_train_batches=warmup + iterations,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, callbacks=[timer],
    )
    trainer.fit(module, datamodule=data)
    # The same episode seeds recur across iterations only when seeds repeat; here the cache
    # pays off through states shared by different episodes (same taxi/passenger/destination).
    measured = timer.times[warmup:]
    return sum(measured) / len(measured)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=6)
    parser.add_argument("--episodes", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as folder:
        for name, seed in (("reflection", 0), ("policy", 1)):
            model, tokenizer = build_backbone(BackboneConfig(num_layers=3, hidden_size=128, num_heads=4, max_positions=512, init_seed=seed))
            export_backbone(model, tokenizer, f"{folder}/{name}")
        cached = run(50_000, folder, args.iterations, args.warmup, args.episodes)
        uncached = run(0, folder, args.iterations, args.warmup, args.episodes)
    print(f"iteration time with cache {cached:.2f}s, without {uncached:.2f}s, speed-up {uncached / cached:.2f}x (target 5x)")


if __name__ == "__main__":
    main()
