"""Hand-checked behaviour of DangerousTaxi (reflectrl.envs.taxi)."""

from __future__ import annotations

import copy
import importlib
import json
import os
import subprocess
import sys
import warnings

import gymnasium
import pytest
from gymnasium.envs.toy_text.taxi import TaxiEnv
from gymnasium.utils.env_checker import check_env

import reflectrl.envs
from reflectrl.envs.taxi import (
    ACTIONS,
    DROPOFF,
    EAST,
    ENV_ID,
    NORTH,
    PICKUP,
    SOUTH,
    SPLITS,
    STAGES,
    WEST,
    DangerousTaxiEnv,
    start_states,
)

R, G, Y, B, IN_TAXI = 0, 1, 2, 3, 4
_BASE = TaxiEnv()


def enc(row: int, col: int, pass_loc: int, dest: int) -> int:
    return int(_BASE.encode(row, col, pass_loc, dest))


def dec(state: int) -> tuple[int, int, int, int]:
    return tuple(int(v) for v in _BASE.decode(state))


def make(stage: str = "full", start: int | None = None, **kwargs) -> tuple[DangerousTaxiEnv, str, dict]:
    env = DangerousTaxiEnv(stage=stage, **kwargs)
    obs, info = env.reset(seed=0, options=None if start is None else {"start_state": start})
    return env, obs, info


# ------------------------------------------------------------------------------ crash rules
@pytest.mark.parametrize(
    ("start", "action"),
    [
        (enc(3, 0, B, Y), EAST),  # "|T| : |" -> wall right of (3,0)
        (enc(3, 0, B, Y), WEST),  # border
        (enc(0, 0, G, Y), NORTH),  # border
        (enc(4, 2, R, G), SOUTH),  # border
        (enc(0, 1, B, R), EAST),  # "|R: | :" -> wall right of (0,1)
    ],
)
def test_first_step_wall_bump_crashes(start: int, action: int) -> None:
    env, obs0, _ = make("full", start)
    obs, reward, terminated, truncated, info = env.step(action)
    assert reward == pytest.approx(-0.5)
    assert terminated and not truncated
    assert info["crashed"] and not info["success"]
    assert info["event"] == "wall"
    assert env.state == start  # a wall bump never moves the taxi
    assert obs.splitlines()[:8] == obs0.splitlines()[:8]
    with pytest.raises(RuntimeError):
        env.step(NORTH)  # the episode is over


def test_illegal_pickup_crashes() -> None:
    env, _, _ = make("full", enc(3, 0, B, Y))  # passenger waits at B (4,3), taxi at (3,0)
    _, reward, terminated, _, info = env.step(PICKUP)
    assert (reward, terminated, info["crashed"], info["event"]) == (-0.5, True, True, "illegal_pickup")


def test_pickup_with_passenger_aboard_crashes() -> None:
    env, _, _ = make("dropoff", enc(2, 2, IN_TAXI, G))
    _, reward, terminated, _, info = env.step(PICKUP)
    assert (reward, terminated, info["crashed"], info["event"]) == (-0.5, True, True, "illegal_pickup")


@pytest.mark.parametrize(
    ("stage", "start"),
    [
        ("dropoff", enc(0, 0, IN_TAXI, G)),  # at station R, destination G: gymnasium allows it, we don't
        ("dropoff", enc(2, 2, IN_TAXI, G)),  # not at a station
        ("full", enc(4, 3, B, Y)),  # passenger still waiting (taxi on its cell)
        ("pickup", enc(4, 0, B, Y)),  # at the destination but without the passenger
    ],
)
def test_illegal_dropoff_crashes(stage: str, start: int) -> None:
    env, _, _ = make(stage, start)
    _, reward, terminated, _, info = env.step(DROPOFF)
    assert (reward, terminated, info["crashed"], info["event"]) == (-0.5, True, True, "illegal_dropoff")
    assert env.state == start


# ------------------------------------------------------------------------------ stages
def test_legal_pickup_ends_pickup_stage_with_success() -> None:
    env, _, _ = make("pickup", enc(3, 3, B, Y))
    _, reward, terminated, _, info = env.step(SOUTH)  # (3,3) -> (4,3) = B ("|B" walls it off west)
    assert (reward, terminated, info["event"]) == (pytest.approx(-0.05), False, "moved")
    obs, reward, terminated, truncated, info = env.step(PICKUP)
    assert reward == pytest.approx(1.0)
    assert terminated and not truncated
    assert info["success"] and not info["crashed"] and info["event"] == "pickup"
    assert dec(env.state)[2] == IN_TAXI
    assert "Passenger in taxi." in obs and "@" in obs
    assert env.oracle_actions() == [] and env.steps_to_goal() == 0


def test_dropoff_stage_starts_with_passenger_aboard() -> None:
    env = DangerousTaxiEnv(stage="dropoff")
    for seed in range(30):
        obs, info = env.reset(seed=seed)
        assert dec(info["start_state"])[2] == IN_TAXI
        assert "@" in obs and "T" not in obs.splitlines()[4] and "Passenger in taxi." in obs
        assert env.privileged_facts()["target"] == "destination"


def test_dropoff_stage_success() -> None:
    env, _, _ = make("dropoff", enc(0, 3, IN_TAXI, G))
    env.step(EAST)
    _, reward, terminated, _, info = env.step(DROPOFF)
    assert (reward, terminated, info["success"], info["event"]) == (pytest.approx(1.0), True, True, "dropoff")


def test_full_stage_needs_pickup_then_dropoff_and_bonus_once() -> None:
    # Taxi on B (4,3) where the passenger waits, destination G (0,4).
    start = enc(4, 3, B, G)
    env, _, _ = make("full", start, dangerous=False)
    _, reward, terminated, _, info = env.step(PICKUP)
    assert (reward, terminated, info["success"], info["event"]) == (
        pytest.approx(1.0),
        False,
        False,
        "pickup",
    )
    # A second pick-up is illegal (passenger aboard): penalty, never a second bonus.
    _, reward, terminated, _, info = env.step(PICKUP)
    assert (reward, terminated, info["event"]) == (pytest.approx(-0.5), False, "illegal_pickup")
    # Dropping the passenger at B (not the destination) is illegal: the passenger stays aboard.
    _, reward, _, _, info = env.step(DROPOFF)
    assert (reward, info["event"]) == (pytest.approx(-0.5), "illegal_dropoff")
    assert dec(env.state)[2] == IN_TAXI
    plan = env.oracle_plan()
    # (4,3) -> (0,4) in 5 moves; north and east tie first, the plan breaks ties by lowest index.
    assert set(env.oracle_actions()) == {NORTH, EAST}
    assert [ACTIONS[a] for a in plan] == ["go north"] * 4 + ["go east", "drop off passenger"]
    rewards = [env.step(a)[1] for a in plan]
    assert rewards == pytest.approx([-0.05] * 5 + [1.0])
    assert env.privileged_facts()["passenger"] == "G"


def test_full_stage_dropoff_before_pickup_is_not_success() -> None:
    env, _, _ = make("full", enc(4, 3, B, Y))
    _, _, terminated, _, info = env.step(DROPOFF)
    assert terminated and info["crashed"] and not info["success"]


def test_non_dangerous_mode_continues_with_penalty() -> None:
    start = enc(3, 0, B, Y)
    env, obs0, _ = make("full", start, dangerous=False)
    obs, reward, terminated, truncated, info = env.step(EAST)
    assert (reward, terminated, truncated) == (pytest.approx(-0.5), False, False)
    assert info["event"] == "wall" and not info["crashed"] and env.state == start
    assert obs.splitlines()[:8] == obs0.splitlines()[:8]
    assert obs.splitlines()[-1] == "History: east"
    _, reward, _, _, info = env.step(PICKUP)
    assert (reward, info["event"]) == (pytest.approx(-0.5), "illegal_pickup")
    _, reward, terminated, _, info = env.step(NORTH)
    assert (reward, terminated, info["event"], dec(env.state)[:2]) == (
        pytest.approx(-0.05),
        False,
        "moved",
        (2, 0),
    )


def test_horizon_truncation() -> None:
    env, _, _ = make("full", enc(2, 2, R, G), horizon=3)
    for step in range(1, 4):
        _, _, terminated, truncated, info = env.step(NORTH if step % 2 else SOUTH)
        assert not terminated and truncated == (step == 3) and info["steps"] == step
    with pytest.raises(RuntimeError):
        env.step(NORTH)


def test_default_horizon_truncates_at_24() -> None:
    env, _, _ = make("full", enc(2, 2, R, G))
    assert env.horizon == 24
    flags = [env.step(NORTH if i % 2 == 0 else SOUTH)[3] for i in range(24)]
    assert flags == [False] * 23 + [True]


def test_termination_on_last_step_is_not_truncation() -> None:
    env, _, _ = make("pickup", enc(3, 3, B, Y), horizon=2)
    env.step(SOUTH)
    _, _, terminated, truncated, info = env.step(PICKUP)
    assert terminated and not truncated and info["success"]


# ------------------------------------------------------------------------------ oracle
def test_oracle_plan_solves_every_start_state_within_default_horizon() -> None:
    env = DangerousTaxiEnv()
    longest = {}
    for stage in STAGES:
        longest[stage] = 0
        for start in start_states(stage):
            env.reset(options={"stage": stage, "start_state": start})
            plan = env.oracle_plan()
            assert len(plan) == env.steps_to_goal() == env.privileged_facts()["steps_to_goal"]
            for i, a in enumerate(plan):
                assert env.privileged_facts()["next_action"] == ACTIONS[a]
                _, _, terminated, truncated, info = env.step(a)
                assert terminated == (i == len(plan) - 1) and not truncated
            assert info["success"] and not info["crashed"]
            longest[stage] = max(longest[stage], len(plan))
    # Measured maxima of the optimal solution lengths; the horizon (24) leaves slack.
    assert longest == {"pickup": 9, "dropoff": 9, "full": 18}
    assert max(longest.values()) + 6 <= env.horizon


@pytest.mark.parametrize("stage", STAGES)
def test_oracle_actions_are_exactly_the_optimal_ones(stage: str) -> None:
    env = DangerousTaxiEnv(stage=stage)
    checked = 0
    for state in range(500):
        _, _, pass_loc, dest = dec(state)
        if (
            pass_loc == dest
            or (stage == "pickup" and pass_loc == IN_TAXI)
            or (stage == "dropoff" and pass_loc != IN_TAXI)
        ):
            continue
        env.reset(options={"start_state": state})
        before, good = env.steps_to_goal(), set(env.oracle_actions())
        assert before > 0 and good
        for a in range(6):
            env.reset(options={"start_state": state})
            _, _, terminated, _, info = env.step(a)
            lowered = not info["crashed"] and env.steps_to_goal() == before - 1
            assert lowered == (a in good), (state, a)
            assert (info["success"] and terminated) == (a in good and before == 1)
        checked += 1
    # pickup: passenger waiting elsewhere than the destination (25*4*3); full adds aboard (25*4)
    assert checked == {"pickup": 300, "dropoff": 100, "full": 400}[stage]


def test_privileged_facts_for_known_state() -> None:
    env, _, _ = make("full", enc(3, 0, B, Y))
    facts = env.privileged_facts()
    assert json.loads(json.dumps(facts)) == facts
    assert facts == {
        "env": "reflectrl/DangerousTaxi-v0",
        "stage": "full",
        "taxi": [3, 0],
        "passenger": "B",
        "passenger_pos": [4, 3],
        "destination": "Y",
        "destination_pos": [4, 0],
        "target": "passenger",
        "target_pos": [4, 3],
        "blocked": ["east", "west"],
        "next_action": "go north",  # (3,0) is boxed in by walls: out via (2,0)
        "good_actions": ["go north"],
        "steps_to_goal": 15,
        "last_event": None,
    }
    env.step(NORTH)
    assert env.privileged_facts()["last_event"] == "moved"
    env2, _, _ = make("dropoff", enc(1, 1, IN_TAXI, R))
    facts2 = env2.privileged_facts()
    assert facts2["passenger"] == "taxi" and facts2["passenger_pos"] is None
    assert facts2["target"] == "destination" and facts2["target_pos"] == [0, 0]
    assert facts2["blocked"] == ["east"]  # "| : | :" wall right of (1,1)


# ------------------------------------------------------------------------------ splits
@pytest.mark.parametrize("stage", STAGES)
def test_splits_are_disjoint_and_cover_start_states(stage: str) -> None:
    parts = {split: start_states(stage, split) for split in SPLITS}
    everything = start_states(stage)
    assert sum(len(p) for p in parts.values()) == len(everything) == len(set(everything))
    assert set().union(*parts.values()) == set(everything)
    total = 100 if stage == "dropoff" else 300
    assert [len(parts[s]) for s in SPLITS] == [total * 6 // 10, total // 5, total // 5]
    if stage != "dropoff":
        # gymnasium's start states; pickup and full share one partition, and starts that differ
        # only in the destination stay together.
        assert set(everything) == {s for s in range(500) if _BASE.initial_state_distrib[s] > 0}
        assert parts == {split: start_states("pickup", split) for split in SPLITS}
        where = {s: split for split, states in parts.items() for s in states}
        for s in everything:
            r, c, p, _ = dec(s)
            assert len({where[enc(r, c, p, d)] for d in range(4) if d != p}) == 1
    else:
        assert all(dec(s)[2] == IN_TAXI for s in everything)


def test_split_sampling_and_info() -> None:
    env = DangerousTaxiEnv(stage="full")
    test_states = set(start_states("full", "test"))
    for seed in range(20):
        _, info = env.reset(seed=seed, options={"split": "test"})
        assert info["start_state"] in test_states and info["split"] == "test"
    _, info = env.reset(options={"start_state": enc(2, 2, IN_TAXI, R)})  # not a full-stage start
    assert info["split"] is None
    with pytest.raises(ValueError):
        env.reset(options={"stage": "pickup", "start_state": enc(2, 2, IN_TAXI, R)})


def test_split_partition_is_the_same_in_another_process() -> None:
    code = (
        "from reflectrl.envs.taxi import start_states;"
        "print([start_states(s, 'test') for s in ('pickup', 'dropoff')])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == str([start_states(s, "test") for s in ("pickup", "dropoff")])


def test_reset_seed_determinism() -> None:
    a, b = DangerousTaxiEnv(), DangerousTaxiEnv()
    for seed in range(10):
        assert a.reset(seed=seed) == b.reset(seed=seed)
        assert a.step(NORTH) == b.step(NORTH)
    starts = {a.reset(seed=seed)[1]["start_state"] for seed in range(20)}
    assert len(starts) > 10
    # Unseeded resets continue the seeded stream deterministically.
    a.reset(seed=7)
    b.reset(seed=7)
    assert [a.reset()[0] for _ in range(5)] == [b.reset()[0] for _ in range(5)]


# ------------------------------------------------------------------------------ observation
def test_observation_for_known_state() -> None:
    env, obs, _ = make("full", enc(3, 0, B, Y), render_mode="ansi")
    assert obs == (
        "+---------+\n"
        "|R: | : :G|\n"
        "| : | : : |\n"
        "| : : : : |\n"
        "|T| : | : |\n"
        "|D| : |P: |\n"
        "+---------+\n"
        "Taxi (3,0). Passenger at B (4,3). Destination Y (4,0).\n"
        "History: none"
    )
    assert obs[(1 + 3) * 12 + 2 * 0 + 1] == "T"
    assert env.render() == obs
    for a in (NORTH, NORTH, EAST, SOUTH, SOUTH, NORTH, WEST):  # 7 moves; history keeps the last 6
        obs = env.step(a)[0]
    assert obs.splitlines()[-1] == "History: north, east, south, south, north, west"
    assert obs.splitlines()[3] == "|T: : : : |"  # (2,0)


def test_facts_line_says_here_where_the_taxi_can_act() -> None:
    def facts(state: int) -> str:
        return make("full", state)[1].splitlines()[-2]

    # on the waiting passenger's cell (the grid shows only T there)
    assert facts(enc(0, 0, R, B)) == "Taxi (0,0). Passenger at R (0,0), here. Destination B (4,3)."
    # on the destination while the passenger still waits elsewhere: nothing to do there yet
    assert facts(enc(4, 3, R, B)) == "Taxi (4,3). Passenger at R (0,0). Destination B (4,3)."
    # carrying the passenger, on and off the destination
    env, _, _ = make("full", enc(0, 0, R, B))
    obs = env.step(PICKUP)[0]
    assert obs.splitlines()[-2] == "Taxi (0,0). Passenger in taxi. Destination B (4,3)."
    assert facts(enc(4, 3, IN_TAXI, B)) == "Taxi (4,3). Passenger in taxi. Destination B (4,3), here."


def test_observation_marks_taxi_at_fixed_offset_and_fits_space() -> None:
    env = DangerousTaxiEnv(stage="full", dangerous=False)
    for state in range(500):
        row, col, pass_loc, dest = dec(state)
        if pass_loc == dest:
            continue
        obs, _ = env.reset(options={"start_state": state})
        for _ in range(6):
            obs = env.step(DROPOFF if pass_loc != IN_TAXI else PICKUP)[0]  # longest history words
        assert obs[(1 + row) * 12 + 2 * col + 1] == ("@" if pass_loc == IN_TAXI else "T")
        grid = "".join(obs.splitlines()[:7])
        assert grid.count("T") + grid.count("@") == 1
        assert env.observation_space.contains(obs), obs
        assert len(obs) <= 210  # short enough for the tiny default (prompts stay well under 512 tokens)
        assert all(line == line.rstrip() for line in obs.splitlines())
        assert "\x1b" not in obs


def test_deepcopy_branches_an_episode() -> None:
    env, _, _ = make("full", enc(3, 0, B, Y))
    env.step(NORTH)
    branch = copy.deepcopy(env)
    assert branch.step(EAST)[0] == env.step(EAST)[0]
    assert branch.privileged_facts() == env.privileged_facts()


def test_no_history_line_when_history_length_is_zero() -> None:
    _, obs, _ = make("full", enc(3, 0, B, Y), history_length=0)
    assert obs.splitlines()[-1].startswith("Taxi (3,0).")


# ------------------------------------------------------------------------------ gymnasium
def test_check_env_passes_without_warnings() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Through make() so the env has a spec (check_env warns it cannot test render modes
        # otherwise); checked unwrapped, as check_env expects.
        check_env(gymnasium.make(ENV_ID, render_mode="ansi").unwrapped)
    assert [str(w.message) for w in caught] == []


def test_registered_and_idempotent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gymnasium warns when an id is registered twice
        importlib.reload(reflectrl.envs)
    env = gymnasium.make(ENV_ID, stage="pickup")
    assert env.spec is not None and env.spec.max_episode_steps is None
    obs, info = env.reset(seed=3)
    assert info["stage"] == "pickup" and info["valid_actions"] == list(ACTIONS)
    assert env.unwrapped.oracle_actions()
    env.step(env.unwrapped.oracle_actions()[0])


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        DangerousTaxiEnv(stage="drive")
    with pytest.raises(ValueError):
        DangerousTaxiEnv(split_fractions=(0.5, 0.2, 0.2))
    env = DangerousTaxiEnv()
    with pytest.raises(RuntimeError):
        env.step(0)
    with pytest.raises(ValueError):
        env.reset(options={"split": "dev"})
    env.reset(seed=0)
    with pytest.raises(ValueError):
        env.step(6)
