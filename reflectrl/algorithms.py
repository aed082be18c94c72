"""RL algorithm pieces as small pure functions (hand-checked in tests/test_algorithms.py).

Shapes: ``log_probs`` / ``advantages`` / ``returns`` are flat [N] over the decisions of a batch;
``all_log_probs`` is [N, C] over each decision's choices with -inf on invalid columns.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def reward_to_go(rewards: Sequence[float], gamma: float = 1.0) -> list[float]:
    """G_t = r_t + gamma * G_{t+1} for one episode (the paper: undiscounted, gamma = 1)."""
    returns: list[float] = []
    running = 0.0
    for reward in reversed(rewards):
        running = float(reward) + gamma * running
        returns.append(running)
    return returns[::-1]


def normalize(values: Tensor, eps: float = 1e-8, center: bool = True) -> Tensor:
    """Standardise (zero mean, unit std) when ``center``; otherwise only rescale to unit RMS.

    Centring subtracts the batch mean, which is itself a baseline: any constant subtracted before
    (a running-mean baseline) is removed again. ``center=False`` keeps that shift, so it divides
    by the root mean square, not by the spread around the mean: a batch of equal advantages
    (every episode failed, minus a positive baseline) would have spread 0 and be divided by
    ``eps``. A single value is only centred (to 0), or kept as is.
    """
    if values.numel() < 2:
        return values - values.mean() if center else values
    if center:
        return (values - values.mean()) / (values.std() + eps)
    return values / (values.square().mean().sqrt() + eps)


def reinforce_loss(log_probs: Tensor, advantages: Tensor) -> Tensor:
    """REINFORCE: -mean(log pi(a|s) * A); advantages carry no gradient."""
    return -(log_probs * advantages.detach()).mean()


def ppo_clip_loss(
    log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, clip: float
) -> tuple[Tensor, Tensor, Tensor]:
    """PPO's clipped surrogate. Returns (loss, clip fraction, approximate KL old->new).

    loss = -mean(min(r * A, clip(r, 1-eps, 1+eps) * A)), r = exp(log_probs - old_log_probs).
    approx KL uses the low-variance estimator mean((r - 1) - log r).
    """
    log_ratio = log_probs - old_log_probs.detach()
    ratio = log_ratio.exp()
    advantages = advantages.detach()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * advantages
    loss = -torch.minimum(unclipped, clipped).mean()
    with torch.no_grad():
        clip_fraction = ((ratio - 1.0).abs() > clip).float().mean()
        approx_kl = ((ratio - 1.0) - log_ratio).mean()
    return loss, clip_fraction, approx_kl


def value_loss(values: Tensor, returns: Tensor) -> Tensor:
    """0.5 * mean squared error of the critic against the (detached) returns."""
    return 0.5 * (values - returns.detach()).pow(2).mean()


def _valid(all_log_probs: Tensor) -> Tensor:
    return torch.isfinite(all_log_probs)


def entropy(all_log_probs: Tensor) -> Tensor:
    """[N] entropy of each masked choice distribution (invalid columns contribute nothing)."""
    valid = _valid(all_log_probs)
    safe = torch.where(valid, all_log_probs, torch.zeros_like(all_log_probs))
    return -(safe.exp() * safe * valid).sum(dim=-1)


def kl_divergence(all_log_probs: Tensor, reference_log_probs: Tensor) -> Tensor:
    """[N] KL(pi || pi_ref) per decision, over the valid choices."""
    valid = _valid(all_log_probs) & _valid(reference_log_probs)
    safe = torch.where(valid, all_log_probs, torch.zeros_like(all_log_probs))
    safe_ref = torch.where(valid, reference_log_probs, torch.zeros_like(reference_log_probs))
    return (safe.exp() * (safe - safe_ref) * valid).sum(dim=-1)


class RunningMeanBaseline:
    """Exponential moving average of returns, a baseline for REINFORCE.

    Its state is two floats, so it checkpoints as primitives (weights_only loading).
    """

    def __init__(self, momentum: float = 0.9) -> None:
        self.momentum = momentum
        self.value = 0.0
        self.initialized = False

    def __call__(self) -> float:
        return self.value

    def update(self, returns: Sequence[float]) -> None:
        if not returns:
            return
        batch_mean = float(sum(returns) / len(returns))
        if not self.initialized:
            self.value, self.initialized = batch_mean, True
        else:
            self.value = self.momentum * self.value + (1 - self.momentum) * batch_mean

    def state_dict(self) -> dict[str, float | bool]:
        return {"value": self.value, "initialized": self.initialized, "momentum": self.momentum}

    def load_state_dict(self, state: dict[str, float | bool]) -> None:
        self.value = float(state["value"])
        self.initialized = bool(state["initialized"])
        self.momentum = float(state["momentum"])
