"""Online RL fine-tuning of the policy player, with the frozen reflection player in the loop."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from reflectrl import algorithms
from reflectrl.agent import ActingSettings, ReflectionCache, TwoPlayerAgent
from reflectrl.backbone import BackboneConfig
from reflectrl.datamodules.episodes import EpisodeBatch
from reflectrl.datamodules.online import RolloutRequest
from reflectrl.errors import ReflectRLError
from reflectrl.lm import choice_log_probs_and_state
from reflectrl.modules.base import LMModule, as_backbone_config, build_frozen_player
from reflectrl.modules.evaluation import EnvEvaluation
from reflectrl.rollout import Decision, Episode, play_episodes

logger = logging.getLogger("reflectrl.rlft")

# Lightning 2.6 warns (a 20-line example included) at every periodic checkpoint of a module with
# manual optimization that the checkpoint holds the weights *after* the step. That is the state
# this module means to save: resume continues with the next rollout (the resume tests in tests/test_rlft.py).
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization", category=UserWarning)


@dataclass
class RLSettings:
    """The RL algorithm and its hyper-parameters."""

    algorithm: Literal["reinforce", "ppo"] = "reinforce"
    """REINFORCE on reward-to-go (the paper), or PPO with the clipped surrogate."""
    baseline: Literal["none", "mean", "critic"] = "mean"
    """Variance reduction: none, a running mean of returns, or a learned critic head. The critic is
    a linear head on the policy's last hidden state at the prompt's end, and its loss also trains
    the policy's trainable weights (a shared trunk, as in PPO with one network; ``value_coef``
    weighs it)."""
    gamma: float = 1.0
    """Discount of the reward-to-go (the paper: undiscounted)."""
    normalize_advantages: bool = True
    """Divide advantages by their standard deviation within each rollout batch."""
    center_advantages: bool = True
    """With ``normalize_advantages``, also subtract the batch mean (standardise). The batch mean is
    itself a baseline, so the running mean's shift is removed again and ``baseline: mean`` updates
    as ``none`` does (up to rounding); ``false`` keeps the baseline's shift and only rescales (to unit
    root mean square, so a batch of equal advantages stays bounded). The shipped
    configs keep the default (their measured results were made with it)."""
    ppo_epochs: int = 2
    """PPO: passes over each rollout batch."""
    minibatch_size: int = 64
    """Decisions per forward/backward chunk (PPO: per optimizer step)."""
    clip: float = 0.1
    """PPO clip range (the paper: 0.1)."""
    entropy_coef: float = 0.0
    """Entropy bonus weight."""
    value_coef: float = 0.5
    """Critic loss weight (baseline "critic")."""
    kl_coef: float = 0.0
    """Weight of KL(policy || initial policy), the SFT policy when starting from it."""
    max_grad_norm: float = 0.3
    """Gradient clipping (the paper: 0.3)."""
    baseline_momentum: float = 0.9
    """Running-mean baseline: EMA momentum."""


@dataclass
class RolloutStats:
    """What one rollout batch produced, for logging and the curriculum."""

    stage: str
    successes: list[bool]
    returns: list[float]
    crashes: list[bool]
    lengths: list[int]
    decisions: int
    seconds: float


def _sampling_seed(seed: int, rollout_index: int) -> int:
    digest = hashlib.sha256(f"sample/{seed}/{rollout_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


class RLFTModule(LMModule):
    """Reflect-RL's RL stage: the policy learns online; the reflection player stays frozen.

    Every training step: (1) play a batch of episodes with the current policy (sampling) and the
    frozen reflector (greedy, memoised), (2) compute reward-to-go and advantages, (3) update the
    policy (REINFORCE: one optimizer step; PPO: epochs x minibatches), (4) log. Everything a
    resumed run needs (rollout counter, baseline, reflection cache) is in the checkpoint, and
    all randomness is derived from (seed, rollout counter), so a resumed run repeats the
    uninterrupted one exactly.
    """

    def __init__(
        self,
        backbone: BackboneConfig,
        reflector: BackboneConfig | None = None,
        acting: ActingSettings | None = None,
        rl: RLSettings | None = None,
        lr: float = 2e-4,
        weight_decay: float = 1e-3,
        reflection_cache_size: int = 50_000,
        seed: int = 0,
        export_dir: str | None = None,
    ) -> None:
        """
        Args:
            backbone: the policy player (usually the policy SFT export; a fresh tiny model gives
                the "RLFT only" baseline).
            reflector: the frozen reflection player (usually the reflection SFT export).
            acting: reflect or not ("without reflection" baseline), reflection/prompt lengths.
            rl: algorithm settings.
            lr: Adam learning rate (the paper: 2e-4).
            weight_decay: AdamW weight decay (the paper: 1e-3).
            reflection_cache_size: entries of the frozen reflector's memo (0 disables it).
            seed: seed of episode sampling and action sampling.
            export_dir: ``save_pretrained`` export of the trained policy at the end of fit.
        """
        super().__init__(backbone, lr, weight_decay, 0, 1.0, export_dir)
        self.automatic_optimization = False
        self.acting = acting if isinstance(acting, ActingSettings) else ActingSettings(**(acting or {}))
        self.acting = self.acting_within_positions(self.acting)
        self.rl = rl if isinstance(rl, RLSettings) else RLSettings(**(rl or {}))
        self.reflector_config = as_backbone_config(reflector)
        self._reflector: tuple[Any, Any] | None = None
        if self.acting.reflect and self.reflector_config is None:
            raise ReflectRLError("config key 'model.init_args.reflector': required when acting.reflect is true")
        hidden = self.model.config.hidden_size if hasattr(self.model.config, "hidden_size") else self.model.config.n_embd
        self.critic: nn.Linear | None = None
        if self.rl.baseline == "critic":
            # Seeded here, not by the global RNG, so a run is reproducible on its own.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.critic = nn.Linear(hidden, 1)
        # The KL reference is the policy as loaded (the SFT policy), frozen and never checkpointed:
        # it is rebuilt from the same config on resume.
        self.reference: nn.Module | None = None
        if self.rl.kl_coef > 0:
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.cache = ReflectionCache(reflection_cache_size) if reflection_cache_size > 0 else None
        # Validation and test memoise in their own cache, never checkpointed: the training cache
        # (in the checkpoint) must not depend on whether a validation ran before a checkpoint
        # (Lightning saves before validating, and a resumed run skips that validation).
        self.eval_cache = ReflectionCache(reflection_cache_size) if reflection_cache_size > 0 else None
        self.baseline = algorithms.RunningMeanBaseline(self.rl.baseline_momentum)
        self.rollouts_done = 0
        self.val_evaluation = EnvEvaluation("val")
        self.test_evaluation = EnvEvaluation("test")
        self.last_rollout: RolloutStats | None = None
        self._reflector_sha256: str | None = None
        # (fingerprint, cache state) of a checkpoint being resumed, until on_train_start
        self._saved_cache: tuple[str | None, dict[str, Any]] | None = None
        # rollout/<stage>/* keys logged so far (see _stop_stale_stage_metrics)
        self._stage_metric_keys: set[str] = set()

    # ------------------------------------------------------------------ players
    def reflector_model(self) -> tuple[Any, Any] | tuple[None, None]:
        if not self.acting.reflect:
            return None, None
        if self._reflector is None:
            assert self.reflector_config is not None
            self._reflector = build_frozen_player(self.reflector_config, self.device)
        return self._reflector

    def agent(self, evaluation: bool = False) -> TwoPlayerAgent:
        """The two players acting together; ``evaluation`` memoises in the evaluation cache."""
        reflector, tokenizer = self.reflector_model()
        cache = self.eval_cache if evaluation else self.cache
        return TwoPlayerAgent(self.model, self.tokenizer, reflector, tokenizer, self.acting, cache)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.trainable_parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    # ------------------------------------------------------------------ the RL step
    def _score(self, prompts: list[str], choices: list[int | list[str]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch = self.acting.choice_batch(self.tokenizer, prompts, choices)
        log_probs, state = choice_log_probs_and_state(self.model, batch, with_state=self.critic is not None)
        values = self.critic(state).squeeze(-1) if self.critic is not None and state is not None else None
        return log_probs, values

    def rollout(self, request: RolloutRequest) -> tuple[list[Episode], RolloutStats]:
        """Step 1: play one batch of episodes with the current weights (no grad, sampling)."""
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(_sampling_seed(self.hparams.seed, self.rollouts_done))
        agent = self.agent()

        def decide(observations: Any, valid_actions: Any) -> list[Decision]:
            return agent.decide(observations, valid_actions, greedy=False, generator=generator)

        stage = request.stage
        episodes = play_episodes(request.envs, request.seeds(self.rollouts_done), request.options(), decide)
        stats = RolloutStats(
            stage=stage,
            successes=[e.success for e in episodes],
            returns=[e.total_return for e in episodes],
            crashes=[e.crashed for e in episodes],
            lengths=[e.length for e in episodes],
            decisions=sum(e.length for e in episodes),
            seconds=time.perf_counter() - start,
        )
        return episodes, stats

    def training_step(self, batch: RolloutRequest, batch_idx: int) -> dict[str, Any]:
        optimizer = self.optimizers()
        step_start = time.perf_counter()
        # Lightning puts the module in train mode. Rollouts score with dropout off (eval mode),
        # so the update must too: with dropout a hub model's update would score each decision
        # under a fresh random mask, not the distribution the action was sampled from (PPO's
        # first ratios would not be 1). Eval mode changes no gradient, only dropout.
        self.model.eval()
        # step 1. roll out with the weights of this step (strictly on-policy)
        episodes, stats = self.rollout(batch)
        update_start = time.perf_counter()

        # step 2. reward-to-go per decision, flattened over the batch
        prompts, choices, actions, old_log_probs, returns = [], [], [], [], []
        for episode in episodes:
            rtg = algorithms.reward_to_go([t.reward for t in episode.transitions], self.rl.gamma)
            for transition, g in zip(episode.transitions, rtg, strict=True):
                prompts.append(transition.decision.extra["prompt"])
                choices.append(self.acting.choices(transition.valid_actions))
                actions.append(transition.decision.action)
                old_log_probs.append(transition.decision.extra["log_prob"])
                returns.append(g)
        device = self.device
        actions_t = torch.tensor(actions, device=device)
        returns_t = torch.tensor(returns, dtype=torch.float32, device=device)
        old_log_probs_t = torch.tensor(old_log_probs, dtype=torch.float32, device=device)
        reference_all = self._reference_log_probs(prompts, choices)

        # step 3. advantages: return minus baseline (critic values at rollout time, or mean)
        if self.rl.baseline == "critic":
            with torch.no_grad():
                values = torch.cat([self._score(prompts[i : i + self.rl.minibatch_size], choices[i : i + self.rl.minibatch_size])[1] for i in range(0, len(prompts), self.rl.minibatch_size)])  # type: ignore[misc]
            advantages = returns_t - values
        elif self.rl.baseline == "mean":
            advantages = returns_t - self.baseline()
        else:
            advantages = returns_t.clone()
        if self.rl.normalize_advantages:
            advantages = algorithms.normalize(advantages, center=self.rl.center_advantages)
        self.baseline.update(returns)

        # step 4. policy (and critic) update
        logs = self._update(optimizer, prompts, choices, actions_t, old_log_probs_t, advantages, returns_t, reference_all)
        self.rollouts_done += 1

        # step 5. log (cleanrl-style tag groups)
        n = len(episodes)
        decisions_per_second = stats.decisions / max(time.perf_counter() - step_start, 1e-9)
        metrics = {
            f"rollout/{stats.stage}/success_rate": sum(stats.successes) / n,
            f"rollout/{stats.stage}/return": sum(stats.returns) / n,
            f"rollout/{stats.stage}/crash_rate": sum(stats.crashes) / n,
            f"rollout/{stats.stage}/episode_length": sum(stats.lengths) / n,
            "rollout/success_rate": sum(stats.successes) / n,
            "charts/rollouts": float(self.rollouts_done),
            "charts/decisions_per_second": decisions_per_second,
            "charts/rollout_seconds": stats.seconds,
            "charts/update_seconds": time.perf_counter() - update_start,
            "charts/lr": optimizer.param_groups[0]["lr"],
            **logs,
        }
        if self.cache is not None:
            metrics["charts/reflection_cache_hit_rate"] = self.cache.hit_rate()
        self._stop_stale_stage_metrics({key for key in metrics if key.startswith(f"rollout/{stats.stage}/")})
        self.log_dict(metrics, batch_size=n)
        self.log("success", metrics["rollout/success_rate"], prog_bar=True, batch_size=n, logger=False)
        self.last_rollout = stats
        return {"successes": stats.successes, "stage": stats.stage}

    def _stop_stale_stage_metrics(self, current: set[str]) -> None:
        """Keep another stage's ``rollout/<stage>/*`` metrics out of this step's log.

        Lightning sends every step metric logged earlier in the epoch to the loggers at each
        later step, with its last value: after a curriculum switch the previous stage's curves
        would get a stale point at every step until the epoch ends, and a run resumed after the
        switch (which has not logged them this epoch) would log other values than the
        uninterrupted run. Resetting their results drops them until the stage is played again.
        """
        stale = self._stage_metric_keys - current
        results = getattr(self.trainer, "_results", None)  # no public way to drop a step metric
        if stale and results is not None:
            for result in results.values():
                if result.meta.name in stale:
                    result.reset()
        self._stage_metric_keys |= current

    @torch.no_grad()
    def _reference_log_probs(self, prompts: list[str], choices: list[int | list[str]]) -> torch.Tensor | None:
        if self.reference is None:
            return None
        chunks = []
        for i in range(0, len(prompts), self.rl.minibatch_size):
            chunk = slice(i, i + self.rl.minibatch_size)
            batch = self.acting.choice_batch(self.tokenizer, prompts[chunk], choices[chunk])
            chunks.append(choice_log_probs_and_state(self.reference, batch, with_state=False)[0])
        width = max(c.shape[1] for c in chunks)
        return torch.cat([nn.functional.pad(c, (0, width - c.shape[1]), value=float("-inf")) for c in chunks])

    def _chunk_loss(
        self, index: torch.Tensor, prompts: list[str], choices: list[int | list[str]], actions: torch.Tensor,
        old_log_probs: torch.Tensor, advantages: torch.Tensor, returns: torch.Tensor, reference_all: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ids = index.tolist()
        all_log_probs, values = self._score([prompts[i] for i in ids], [choices[i] for i in ids])
        log_probs = all_log_probs.gather(1, actions[index][:, None]).squeeze(1)
        stats: dict[str, torch.Tensor] = {}
        if self.rl.algorithm == "ppo":
            policy_loss, stats["losses/clipfrac"], stats["losses/approx_kl"] = algorithms.ppo_clip_loss(
                log_probs, old_log_probs[index], advantages[index], self.rl.clip
            )
        else:
            policy_loss = algorithms.reinforce_loss(log_probs, advantages[index])
        entropy = algorithms.entropy(all_log_probs).mean()
        loss = policy_loss - self.rl.entropy_coef * entropy
        stats["losses/policy"], stats["losses/entropy"] = policy_loss.detach(), entropy.detach()
        if values is not None:
            critic_loss = algorithms.value_loss(values, returns[index])
            loss = loss + self.rl.value_coef * critic_loss
            stats["losses/value"] = critic_loss.detach()
        if reference_all is not None:
            reference = reference_all[index][:, : all_log_probs.shape[1]]
            kl = algorithms.kl_divergence(all_log_probs, reference).mean()
            loss = loss + self.rl.kl_coef * kl
            stats["losses/kl_to_reference"] = kl.detach()
        return loss, stats

    def _update(
        self, optimizer: Any, prompts: list[str], choices: list[int | list[str]], actions: torch.Tensor,
        old_log_probs: torch.Tensor, advantages: torch.Tensor, returns: torch.Tensor, reference_all: torch.Tensor | None,
    ) -> dict[str, float]:
        total = len(prompts)
        size = self.rl.minibatch_size
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}

        def record(stats: dict[str, torch.Tensor], weight: int) -> None:
            # weighted by the chunk's decisions: unequal chunks average to the full-batch value
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + float(value) * weight
                counts[key] = counts.get(key, 0) + weight

        if self.rl.algorithm == "ppo":
            # PPO: several epochs of shuffled minibatches, one optimizer step each. The shuffle
            # generator is derived from the rollout counter, so a resumed run shuffles alike.
            generator = torch.Generator().manual_seed(_sampling_seed(self.hparams.seed + 1, self.rollouts_done))
            for _ in range(self.rl.ppo_epochs):
                order = torch.randperm(total, generator=generator)
                for start in range(0, total, size):
                    index = order[start : start + size].to(self.device)
                    loss, stats = self._chunk_loss(index, prompts, choices, actions, old_log_probs, advantages, returns, reference_all)
                    optimizer.zero_grad()
                    self.manual_backward(loss)
                    self.clip_gradients(optimizer, gradient_clip_val=self.rl.max_grad_norm, gradient_clip_algorithm="norm")
                    optimizer.step()
                    record(stats, len(index))
        else:
            # REINFORCE: one optimizer step per rollout batch; chunks only bound memory, their
            # gradients are accumulated with weights so the step equals the full-batch gradient.
            optimizer.zero_grad()
            for start in range(0, total, size):
                index = torch.arange(start, min(start + size, total), device=self.device)
                loss, stats = self._chunk_loss(index, prompts, choices, actions, old_log_probs, advantages, returns, reference_all)
                self.manual_backward(loss * (len(index) / total))
                record(stats, len(index))
            self.clip_gradients(optimizer, gradient_clip_val=self.rl.max_grad_norm, gradient_clip_algorithm="norm")
            optimizer.step()
        return {key: sums[key] / counts[key] for key in sums}

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch: EpisodeBatch, batch_idx: int) -> None:
        self.val_evaluation.play(batch, self.agent(evaluation=True))

    def on_validation_epoch_end(self) -> None:
        self.val_evaluation.finish(self)

    def test_step(self, batch: EpisodeBatch, batch_idx: int) -> None:
        self.test_evaluation.play(batch, self.agent(evaluation=True))

    def on_test_epoch_end(self) -> None:
        self.test_evaluation.finish(
            self, {"model": type(self).__name__, "reflect": self.acting.reflect, "rollouts": self.rollouts_done}
        )

    # ------------------------------------------------------------------ checkpoints
    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.rl.algorithm == "ppo":
            # PPO takes a varying number of optimizer steps per rollout batch, so Lightning's
            # global step jumps (6, 12, 18, ...): every_n_train_steps > 1 would skip most saves.
            for callback in self.trainer.checkpoint_callbacks:
                every = int(getattr(callback, "_every_n_train_steps", 0) or 0)
                if every > 1:
                    raise ReflectRLError(
                        f"config key 'trainer.callbacks' ModelCheckpoint.every_n_train_steps: {every} with "
                        "rl.algorithm ppo: PPO's optimizer steps per rollout batch vary, so most saves would be "
                        "skipped; use every_n_train_steps: 1 (save_top_k: 0 keeps only last.ckpt) or train_time_interval"
                    )

    def _cache_fingerprint(self) -> str:
        """What the memoised reflections depend on besides their prompt (the key): the reflector's
        settings, its weights (a reflector retrained into the same folder writes other texts) and
        the reflection length."""
        return json.dumps(
            {
                "reflector": repr(self.reflector_config),
                "weights": self._reflector_digest(),
                "max_tokens": self.acting.reflection_max_tokens,
            },
            sort_keys=True,
        )

    def _reflector_digest(self) -> str | None:
        """SHA-256 of the frozen reflector's tensors, computed once (None without a reflector)."""
        if self._reflector_sha256 is None:
            reflector, _ = self.reflector_model()
            if reflector is None:
                return None
            digest = hashlib.sha256()
            for name, tensor in reflector.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
            self._reflector_sha256 = digest.hexdigest()
        return self._reflector_sha256

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["reflectrl_rl"] = {
            "rollouts_done": self.rollouts_done,
            "baseline": self.baseline.state_dict(),
            "cache": self.cache.state_dict() if self.cache is not None else None,
            "cache_fingerprint": self._cache_fingerprint(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("reflectrl_rl")
        if state is None:
            return
        self.rollouts_done = int(state["rollouts_done"])
        self.baseline.load_state_dict(state["baseline"])
        if self.cache is not None and state["cache"] is not None:
            # Checked against this reflector in on_train_start: the fingerprint hashes its weights,
            # and it must be built on the device the module is moved to after this hook.
            self._saved_cache = (state.get("cache_fingerprint"), state["cache"])

    def on_train_start(self) -> None:
        super().on_train_start()
        if self._saved_cache is not None and self.cache is not None:
            saved, cache_state = self._saved_cache
            if saved is not None and saved != self._cache_fingerprint():
                # Another reflector (weights, settings) or reflection length: not its output.
                logger.warning("reflection cache in the checkpoint was made by another reflector setup: not loaded")
            else:
                self.cache.load_state_dict(cache_state)
        self._saved_cache = None
