"""reflectrl.algorithms against numbers worked out by hand (in the comments next to each case)."""

from __future__ import annotations

import math

import pytest
import torch

from reflectrl import algorithms

INF = float("inf")


# ---------------------------------------------------------------------------------------------- reward_to_go
def test_reward_to_go_undiscounted() -> None:
    # rewards 1, 0, 2 with gamma 1: G2 = 2, G1 = 0 + 2 = 2, G0 = 1 + 2 = 3
    assert algorithms.reward_to_go([1.0, 0.0, 2.0]) == [3.0, 2.0, 2.0]
    assert algorithms.reward_to_go([1.0, 0.0, 2.0], gamma=1.0) == [3.0, 2.0, 2.0]


def test_reward_to_go_discounted() -> None:
    # gamma 0.5: G2 = 2, G1 = 0 + 0.5 * 2 = 1, G0 = 1 + 0.5 * 1 = 1.5
    assert algorithms.reward_to_go([1.0, 0.0, 2.0], gamma=0.5) == [1.5, 1.0, 2.0]
    # Taxi-like: three steps of -0.05 then +1; gamma 0.5:
    # G3 = 1, G2 = -0.05 + 0.5 = 0.45, G1 = -0.05 + 0.225 = 0.175, G0 = -0.05 + 0.0875 = 0.0375
    assert algorithms.reward_to_go([-0.05, -0.05, -0.05, 1.0], gamma=0.5) == pytest.approx(
        [0.0375, 0.175, 0.45, 1.0]
    )


def test_reward_to_go_edge_cases() -> None:
    assert algorithms.reward_to_go([]) == []
    assert algorithms.reward_to_go([-0.5]) == [-0.5]
    # gamma 0: every return is its own reward
    assert algorithms.reward_to_go([1.0, 2.0, 3.0], gamma=0.0) == [1.0, 2.0, 3.0]
    # returns are plain floats (they go into torch.tensor and the baseline)
    assert all(type(g) is float for g in algorithms.reward_to_go([1, 2]))


# ---------------------------------------------------------------------------------------------- normalize
def test_normalize() -> None:
    # [1, 2, 3, 4]: mean 2.5, unbiased std sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3) = sqrt(5/3) = 1.2909944
    # -> [-1.5, -0.5, 0.5, 1.5] / 1.2909944 = [-1.1618950, -0.3872983, 0.3872983, 1.1618950]
    out = algorithms.normalize(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert out.tolist() == pytest.approx([-1.1618950, -0.3872983, 0.3872983, 1.1618950], abs=1e-6)


def test_normalize_without_centring_keeps_the_baseline_shift() -> None:
    # RMS of [1, 2, 3, 4] = sqrt((1 + 4 + 9 + 16) / 4) = sqrt(7.5) = 2.7386128
    # -> [0.3651484, 0.7302967, 1.0954451, 1.4605935]: all positive
    out = algorithms.normalize(torch.tensor([1.0, 2.0, 3.0, 4.0]), center=False)
    assert out.tolist() == pytest.approx([0.3651484, 0.7302967, 1.0954451, 1.4605935], abs=1e-6)
    # returns [1, 2, 3, 4] minus a running-mean baseline of 3: [-2, -1, 0, 1], RMS sqrt(6/4) = 1.2247449
    shifted = torch.tensor([1.0, 2.0, 3.0, 4.0]) - 3.0
    assert algorithms.normalize(shifted, center=False).tolist() == pytest.approx(
        [-1.6329932, -0.8164966, 0.0, 0.8164966], abs=1e-6
    )
    # centring removes the baseline again: the same advantages with or without it
    assert algorithms.normalize(shifted).tolist() == pytest.approx(
        algorithms.normalize(shifted + 3.0).tolist(), abs=1e-6
    )
    assert algorithms.normalize(torch.tensor([5.0]), center=False).tolist() == [5.0]


def test_normalize_degenerate() -> None:
    # a single value is only centred: 5 - 5 = 0
    assert algorithms.normalize(torch.tensor([5.0])).tolist() == [0.0]
    # constant values: std 0, centred values 0 -> 0 / eps = 0, never NaN
    out = algorithms.normalize(torch.tensor([2.0, 2.0, 2.0]))
    assert out.tolist() == [0.0, 0.0, 0.0]
    # uncentred, all episodes failed (return 0) minus a baseline of 0.5: RMS 0.5 -> -1 each, not -5e7
    out = algorithms.normalize(torch.tensor([-0.5, -0.5, -0.5, -0.5]), center=False)
    assert out.tolist() == pytest.approx([-1.0, -1.0, -1.0, -1.0], abs=1e-6)
    assert algorithms.normalize(torch.zeros(3), center=False).tolist() == [0.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------------- reinforce
def test_reinforce_loss_value_and_gradient() -> None:
    # loss = -mean(lp * A) = -((-1)(1) + (-2)(3)) / 2 = -(-7) / 2 = 3.5
    log_probs = torch.tensor([-1.0, -2.0], requires_grad=True)
    advantages = torch.tensor([1.0, 3.0], requires_grad=True)
    loss = algorithms.reinforce_loss(log_probs, advantages)
    assert loss.item() == pytest.approx(3.5)
    loss.backward()
    # d loss / d lp_i = -A_i / N = [-0.5, -1.5]; the advantages carry no gradient
    assert log_probs.grad.tolist() == pytest.approx([-0.5, -1.5])
    assert advantages.grad is None


# ---------------------------------------------------------------------------------------------- PPO
def _ppo_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ratios = torch.tensor([1.1, 1.5, 0.5, 1.5, 0.5, 0.9], dtype=torch.float64)
    advantages = torch.tensor([2.0, 1.0, 1.0, -1.0, -1.0, -2.0], dtype=torch.float64)
    old = torch.full((6,), -1.0, dtype=torch.float64)
    log_probs = (old + ratios.log()).requires_grad_(True)
    return log_probs, old, advantages


def test_ppo_clip_loss_inside_and_outside_the_clip_range() -> None:
    # clip 0.2, range [0.8, 1.2]; per decision min(r * A, clip(r) * A):
    #   r=1.1 A=+2 (inside):            min(2.2, 2.2)   =  2.2
    #   r=1.5 A=+1 (above, A > 0):      min(1.5, 1.2)   =  1.2   clipped term wins
    #   r=0.5 A=+1 (below, A > 0):      min(0.5, 0.8)   =  0.5   unclipped (pessimistic)
    #   r=1.5 A=-1 (above, A < 0):      min(-1.5, -1.2) = -1.5   unclipped (pessimistic)
    #   r=0.5 A=-1 (below, A < 0):      min(-0.5, -0.8) = -0.8   clipped term wins
    #   r=0.9 A=-2 (inside):            min(-1.8, -1.8) = -1.8
    # sum = 2.2 + 1.2 + 0.5 - 1.5 - 0.8 - 1.8 = -0.2; loss = -(-0.2 / 6) = 1/30
    log_probs, old, advantages = _ppo_case()
    loss, clip_fraction, approx_kl = algorithms.ppo_clip_loss(log_probs, old, advantages, clip=0.2)
    assert loss.item() == pytest.approx(1 / 30, abs=1e-9)
    # |r - 1| > 0.2 for r = 1.5, 0.5, 1.5, 0.5 -> 4 of 6
    assert clip_fraction.item() == pytest.approx(4 / 6)
    # mean((r - 1) - ln r):
    #   1.1: 0.1 - 0.0953102 = 0.0046898     1.5: 0.5 - 0.4054651 = 0.0945349 (twice)
    #   0.5: -0.5 + 0.6931472 = 0.1931472 (twice)   0.9: -0.1 + 0.1053605 = 0.0053605
    # sum = 0.5854145 -> / 6 = 0.0975691
    assert approx_kl.item() == pytest.approx(0.0975691, abs=1e-6)
    assert not clip_fraction.requires_grad and not approx_kl.requires_grad

    loss.backward()
    # where the unclipped term is the min, d/d lp of -(r A)/N = -r A / N; where the clipped one is,
    # the clamp is flat and the gradient is 0:
    #   [-1.1*2/6, 0, -0.5*1/6, -1.5*(-1)/6, 0, -0.9*(-2)/6] = [-0.3666667, 0, -0.0833333, 0.25, 0, 0.3]
    assert log_probs.grad.tolist() == pytest.approx([-11 / 30, 0.0, -1 / 12, 0.25, 0.0, 0.3], abs=1e-9)


def test_ppo_clip_loss_on_policy_is_the_policy_gradient() -> None:
    # ratio 1 everywhere: loss = -mean(A) = -(1 - 3) / 2 = 1; nothing clipped; KL 0
    log_probs = torch.tensor([-0.5, -2.0], requires_grad=True)
    advantages = torch.tensor([1.0, -3.0])
    loss, clip_fraction, approx_kl = algorithms.ppo_clip_loss(
        log_probs, log_probs.detach().clone(), advantages, 0.1
    )
    assert loss.item() == pytest.approx(1.0)
    assert clip_fraction.item() == 0.0
    assert approx_kl.item() == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    # gradient equals REINFORCE's at ratio 1: -A / N = [-0.5, 1.5]
    assert log_probs.grad.tolist() == pytest.approx([-0.5, 1.5])


def test_ppo_clip_loss_detaches_old_log_probs_and_advantages() -> None:
    log_probs = torch.tensor([-1.0], requires_grad=True)
    old = torch.tensor([-1.2], requires_grad=True)
    advantages = torch.tensor([1.0], requires_grad=True)
    loss, _, _ = algorithms.ppo_clip_loss(log_probs, old, advantages, 0.2)
    loss.backward()
    assert old.grad is None and advantages.grad is None
    # r = e^0.2 = 1.2214 > 1.2 with A > 0: the clipped term 1.2 is the min, so the gradient is 0
    assert loss.item() == pytest.approx(-1.2)
    assert log_probs.grad.item() == 0.0


# ---------------------------------------------------------------------------------------------- value
def test_value_loss() -> None:
    # 0.5 * mean((1-0)^2, (2-2)^2, (3-5)^2) = 0.5 * 5 / 3 = 5/6
    values = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    returns = torch.tensor([0.0, 2.0, 5.0], requires_grad=True)
    loss = algorithms.value_loss(values, returns)
    assert loss.item() == pytest.approx(5 / 6)
    loss.backward()
    # d/dv = (v - R) / N = [1/3, 0, -2/3]; returns are targets, no gradient
    assert values.grad.tolist() == pytest.approx([1 / 3, 0.0, -2 / 3])
    assert returns.grad is None


# ---------------------------------------------------------------------------------------------- entropy / KL
def test_entropy_with_masked_columns() -> None:
    rows = torch.tensor(
        [
            [math.log(0.5), math.log(0.5), -INF],  # uniform over 2 valid of 3 -> ln 2 = 0.6931472
            [0.0, -INF, -INF],  # one valid choice -> 0
            [math.log(1 / 3)] * 3,  # uniform over 3 -> ln 3 = 1.0986123
            # -(.25 ln .25 + .75 ln .75) = 0.3465736 + 0.2157616 = 0.5623351
            [math.log(0.25), math.log(0.75), -INF],
        ],
        requires_grad=True,
    )
    out = algorithms.entropy(rows)
    assert out.tolist() == pytest.approx([0.6931472, 0.0, 1.0986123, 0.5623351], abs=1e-6)
    # -inf columns must not poison the gradient (0 * -inf would be NaN)
    out.sum().backward()
    assert torch.isfinite(rows.grad).all()
    assert rows.grad[:, 2][[0, 1, 3]].tolist() == [0.0, 0.0, 0.0]


def test_kl_divergence_with_masked_columns() -> None:
    p = torch.tensor(
        [
            [math.log(0.5), math.log(0.5), -INF],
            [math.log(0.5), math.log(0.5), -INF],
            [0.0, -INF, -INF],
        ],
        requires_grad=True,
    )
    q = torch.tensor(
        [
            # .5 ln(.5/.25) + .5 ln(.5/.75) = .3465736 - .2027326 = .1438410
            [math.log(0.25), math.log(0.75), -INF],
            [math.log(0.5), math.log(0.5), -INF],  # identical -> 0
            [math.log(0.5), -INF, -INF],  # only column 0 is valid in both: 1 * ln(1 / .5) = ln 2
        ]
    )
    out = algorithms.kl_divergence(p, q)
    assert out.tolist() == pytest.approx([0.1438410, 0.0, 0.6931472], abs=1e-6)
    out.sum().backward()
    assert torch.isfinite(p.grad).all()


def test_kl_divergence_is_nonnegative_on_random_masked_distributions() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 6, generator=generator)
    ref_logits = torch.randn(16, 6, generator=generator)
    valid = torch.arange(6)[None, :] < torch.randint(1, 7, (16, 1), generator=generator)
    p = logits.masked_fill(~valid, -INF).log_softmax(-1)
    q = ref_logits.masked_fill(~valid, -INF).log_softmax(-1)
    kl = algorithms.kl_divergence(p, q)
    assert (kl >= -1e-6).all()
    assert algorithms.kl_divergence(p, p).abs().max().item() < 1e-6
    # entropy of a masked distribution is at most ln(#valid)
    assert (algorithms.entropy(p) <= valid.sum(-1).float().log() + 1e-6).all()


# ---------------------------------------------------------------------------------------------- baseline
def test_running_mean_baseline_updates() -> None:
    baseline = algorithms.RunningMeanBaseline(momentum=0.9)
    assert baseline() == 0.0 and not baseline.initialized
    baseline.update([])  # no-op
    assert baseline() == 0.0 and not baseline.initialized
    baseline.update([2.0, 4.0])  # first batch: the batch mean itself, 3
    assert baseline() == pytest.approx(3.0) and baseline.initialized
    baseline.update([13.0])  # 0.9 * 3 + 0.1 * 13 = 2.7 + 1.3 = 4.0
    assert baseline() == pytest.approx(4.0)
    baseline.update([])  # still a no-op once initialised
    assert baseline() == pytest.approx(4.0)


def test_running_mean_baseline_state_round_trip() -> None:
    baseline = algorithms.RunningMeanBaseline(momentum=0.9)
    baseline.update([2.0, 4.0])
    baseline.update([13.0])
    state = baseline.state_dict()
    # primitives only (weights_only checkpoint loading)
    assert state == {"value": pytest.approx(4.0), "initialized": True, "momentum": 0.9}
    assert all(type(v) in (float, bool) for v in state.values())

    restored = algorithms.RunningMeanBaseline(momentum=0.5)
    restored.load_state_dict(state)
    assert restored.state_dict() == state
    # both continue identically: 0.9 * 4 + 0.1 * (-6) = 3.6 - 0.6 = 3.0
    baseline.update([-6.0])
    restored.update([-6.0])
    assert restored() == baseline() == pytest.approx(3.0)

    # a never-updated baseline round-trips as uninitialised (its first batch still sets the mean)
    fresh = algorithms.RunningMeanBaseline()
    fresh.load_state_dict(algorithms.RunningMeanBaseline(momentum=0.8).state_dict())
    fresh.update([10.0])
    assert fresh() == 10.0 and fresh.momentum == 0.8
