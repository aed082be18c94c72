"""ALFWorld: generated games, the env over them, the teacher data and the pipeline end to end.

Skipped without the optional extra (``pip install -e ".[alfworld]"``). Games are generated at
test time from the wheel's own PDDL domain and grammar into tmp folders; ``ALFWORLD_DATA`` points
into tmp too, so importing alfworld creates nothing in the home folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, TINY_BACKBONE, run_main

if importlib.util.find_spec("alfworld") is None:
    pytest.skip("ALFWorld tests need the optional extra: pip install -e '.[alfworld]'", allow_module_level=True)
textworld = pytest.importorskip("textworld", reason="ALFWorld tests need the optional extra: pip install -e '.[alfworld]'")

import gymnasium  # noqa: E402

from reflectrl.alfworld_games import (  # noqa: E402
    DEFAULT_FAMILIES,
    MANIFEST,
    PAPER_FAMILY,
    ALFWorldGames,
    GameFamily,
)
from reflectrl.data import POLICY_FIELDS, read_jsonl  # noqa: E402
from reflectrl.envs.alfworld import ENV_ID, PAPER_STAGE, TASK_TYPES, ALFWorldEnv, find_games  # noqa: E402
from reflectrl.errors import ReflectRLError  # noqa: E402
from reflectrl.generate import DataGenerator  # noqa: E402
from reflectrl.teachers import OfflineTeacher, ReflectionRequest  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAMILIES = [PAPER_FAMILY, *DEFAULT_FAMILIES]
GAMES = {"train": 1, "valid_seen": 1, "valid_unseen": 1}
STAGES = [PAPER_STAGE, *TASK_TYPES]


@pytest.fixture(scope="module", autouse=True)
def alfworld_data_in_tmp(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ALFWORLD_DATA", str(tmp_path_factory.mktemp("alfworld_data")))
        yield


@pytest.fixture(scope="module")
def games(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One game per family (the six + the paper's) and split."""
    output = tmp_path_factory.mktemp("alfworld") / "games"
    ALFWorldGames(output_dir=str(output), games=GAMES, families=FAMILIES).build(seed=0)
    return output


def make(games: Path, **kwargs: Any) -> gymnasium.Env:
    return gymnasium.make(ENV_ID, data_root=str(games), **kwargs)


def play_expert(env: gymnasium.Env, seed: int, options: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    _, info = env.reset(seed=seed, options=options)
    commands: list[str] = []
    while True:
        action = env.unwrapped.oracle_actions()[0]
        commands.append(info["valid_actions"][action])
        _, reward, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return info | {"reward": reward}, commands


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


# ------------------------------------------------------------------------------------ generator
def test_games_layout_splits_and_scenes(games: Path) -> None:
    manifest = json.loads((games / MANIFEST).read_text())
    assert set(manifest["games"]) == {"train", "valid_seen", "valid_unseen"}
    scenes: dict[str, set[int]] = {}
    for split in ("train", "valid_seen", "valid_unseen"):
        found = find_games(games, split)
        assert len(found) == len(FAMILIES)
        assert {game.task_type for game in found} == set(TASK_TYPES)
        for game in found:
            folder = Path(game.path).parent
            assert {p.name for p in folder.iterdir()} == {"traj_data.json", "initial_state.pddl", "game.tw-pddl"}
            data = json.loads(Path(game.path).read_text())
            assert data["solvable"] is True and data["walkthrough"]
            scenes.setdefault(split, set()).add(json.loads((folder / "traj_data.json").read_text())["scene"]["scene_num"])
    # valid_unseen rooms are out of distribution: no other split uses them.
    assert not scenes["valid_unseen"] & (scenes["train"] | scenes["valid_seen"])


def test_generator_is_deterministic_and_reuses_its_folder(tmp_path: Path) -> None:
    families = [PAPER_FAMILY, GameFamily("pick_two_obj_and_place")]
    first, second = tmp_path / "a", tmp_path / "b"
    ALFWorldGames(output_dir=str(first), games=GAMES, families=families).build(seed=3)
    ALFWorldGames(output_dir=str(second), games=GAMES, families=families).build(seed=3)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / p).read_bytes() == (second / p).read_bytes() for p in files)
    before = snapshot(first)
    ALFWorldGames(output_dir=str(first), games=GAMES, families=families).build(seed=3)  # same args: reused
    assert snapshot(first) == before
    with pytest.raises(ReflectRLError, match="overwrite"):
        ALFWorldGames(output_dir=str(first), games=GAMES, families=families).build(seed=4)


def test_unreachable_family_is_a_one_line_error(tmp_path: Path) -> None:
    # canContain(Cabinet, Apple) is false: upstream would crash later with KeyError 'val1'.
    generator = ALFWorldGames(
        output_dir=str(tmp_path / "g"), games=GAMES, families=[GameFamily("pick_cool_then_place_in_recep", "Apple", "Cabinet")]
    )
    with pytest.raises(ReflectRLError) as caught:
        generator.build(seed=0)
    assert "\n" not in str(caught.value) and "cannot contain" in str(caught.value)
    assert not (tmp_path / "g").exists()
    with pytest.raises(ReflectRLError, match="unknown task type"):
        ALFWorldGames(families=[GameFamily("pick_three")])


# ------------------------------------------------------------------------------------------ env
def test_expert_wins_every_game(games: Path) -> None:
    env = make(games)
    for split in ("train", "valid_seen", "valid_unseen"):
        for game in env.unwrapped.games_of("all", split):
            info, commands = play_expert(env, 0, {"split": split, "game": game.key})
            assert info["success"] and info["reward"] == 1.0, (game.key, commands)
            assert not info["crashed"] and info["steps"] == len(commands)


def test_admissible_commands_match_the_engine_after_every_step(games: Path) -> None:
    """Our valid actions = the admissible commands of an independent TextWorld engine on the same game."""
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
    from textworld.envs.pddl import PddlEnv

    env = make(games)
    argv = list(sys.argv)
    for stage in ("look_at_obj_in_light", "pick_two_obj_and_place"):
        _, info = env.reset(seed=1, options={"stage": stage, "split": "train"})
        reference = AlfredDemangler(PddlEnv(textworld.EnvInfos(admissible_commands=True, won=True)))
        reference.load(json.loads(Path(env.unwrapped.games_of(stage, "train")[0].path).read_text()))
        state = reference.reset()
        sys.argv[:] = argv
        rng = random.Random(0)
        for step in range(12):
            assert info["valid_actions"] == state["admissible_commands"], step
            oracle = env.unwrapped.oracle_actions()
            # Mostly the expert, sometimes a random command (wrong turns must match too).
            action = oracle[0] if rng.random() < 0.7 else rng.randrange(len(info["valid_actions"]))
            command = info["valid_actions"][action]
            _, _, terminated, truncated, info = env.step(action)
            state, _, _ = reference.step(command)
            if terminated or truncated:
                assert state["won"] == info["success"]
                break
    assert sys.argv == argv  # the translator's sys.argv overwrite is undone


def test_api_infos_observation_and_determinism(games: Path) -> None:
    env = make(games, horizon=4)
    state = random.getstate()
    obs, info = env.reset(seed=5, options={"stage": PAPER_STAGE, "split": "val"})
    assert random.getstate() == state  # the expert's global-random use is private
    assert {"valid_actions", "stage", "success", "crashed", "split", "task_type", "game", "start_state"} <= set(info)
    assert info["task_type"] == "pick_and_place_simple" and "Tomato-None-Microwave" in info["game"]
    assert info["game"].startswith("valid_seen/")
    assert obs.startswith("Task: ") and "tomato" in obs and "microwave" in obs.splitlines()[0]
    assert obs.splitlines()[1].startswith("Room: ") and obs.endswith("Holding: nothing.")
    facts = env.unwrapped.privileged_facts()
    assert facts["env"] == ENV_ID and facts["next_action"] in info["valid_actions"]
    json.dumps(facts)
    again, _ = env.reset(seed=5, options={"stage": PAPER_STAGE, "split": "val"})
    assert again == obs
    # Text commands, history and the horizon.
    _, _, _, _, info = env.step(info["valid_actions"][0])
    obs, _, terminated, truncated, info = env.step("look")
    assert "> look" in obs and info["event"] == "look" and not (terminated or truncated)
    env.step("inventory")
    _, _, terminated, truncated, _ = env.step("help")
    assert truncated and not terminated
    # A command that is not admissible: crash when dangerous, a no-op otherwise.
    env.reset(seed=5, options={"split": "train"})
    _, _, terminated, _, info = env.step("fly to the moon")
    assert terminated and info["crashed"] and info["event"] == "invalid"
    safe = make(games, dangerous=False)
    safe.reset(seed=5, options={"split": "train"})
    obs, _, terminated, _, info = safe.step("fly to the moon")
    assert not terminated and "Nothing happens." in obs


def test_check_env(games: Path) -> None:
    from gymnasium.utils.env_checker import check_env

    check_env(ALFWorldEnv(data_root=str(games), task_types=["look_at_obj_in_light"]), skip_render_check=True)


def test_no_game_is_a_one_line_error(games: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    cases = [
        lambda: ALFWorldEnv(data_root=str(empty)),
        lambda: ALFWorldEnv(data_root=str(tmp_path / "missing")),
        lambda: ALFWorldEnv(data_root=str(games), objects=["Unicorn"]),
        lambda: ALFWorldEnv(data_root=str(games), task_types=["pick_and_place_simple"]).reset(
            seed=0, options={"stage": "look_at_obj_in_light"}
        ),
        lambda: ALFWorldEnv(data_root=str(games)).reset(seed=0, options={"stage": "pick_two_obj_and_place-Apple-Sofa"}),
        lambda: ALFWorldEnv(data_root=str(games), stage="depth1"),
    ]
    for case in cases:
        with pytest.raises(ValueError) as caught:
            case()
        assert "\n" not in str(caught.value), str(caught.value)
    with pytest.raises(ValueError, match="alfworld-download"):
        ALFWorldEnv(data_root=str(tmp_path / "missing"))


def test_unsolvable_game_file_is_a_one_line_error(games: Path, tmp_path: Path) -> None:
    root = tmp_path / "broken"
    source = Path(find_games(games, "train")[0].path).parent
    target = root / "train" / source.name / "trial_00000"
    shutil.copytree(source, target)
    data = json.loads((target / "game.tw-pddl").read_text())
    # A goal no action reaches: the target object type does not occur in the room.
    target_type = json.loads((target / "traj_data.json").read_text())["pddl_params"]["object_target"]
    head, goal = data["pddl_problem"].split("(:goal", 1)
    head = head.replace("(:objects\n", "(:objects\n    NothingType - otype\n", 1)
    data["pddl_problem"] = head + "(:goal" + goal.replace(f"{target_type}Type", "NothingType")
    (target / "game.tw-pddl").write_text(json.dumps(data))
    env = ALFWorldEnv(data_root=str(root))
    with pytest.raises(ValueError) as caught:
        env.reset(seed=0)
    assert "\n" not in str(caught.value) and "unsolvable" in str(caught.value)


def test_handcoded_expert_is_available(games: Path) -> None:
    """Upstream's init_env drops expert_type; here the handcoded expert is the one asked for."""
    env = make(games, expert="handcoded", horizon=40)
    info, commands = play_expert(env, 0, {"stage": "pick_and_place_simple", "split": "train"})
    assert info["success"], commands


TOOLS = {"pick_heat_then_place_in_recep": "microwave", "pick_cool_then_place_in_recep": "fridge", "pick_clean_then_place_in_recep": "sinkbasin"}


def test_search_expert_wins_without_going_where_only_privileged_facts_lead(games: Path) -> None:
    """The planner walks straight to where the object hides; the search expert goes only where
    the history (a place seen inside) or the task (goal, tool) leads, and otherwise searches:
    opens the closed receptacle it stands at, or visits an unseen one."""
    env = make(games, expert="search")
    searches = 0
    for split in ("train", "valid_seen", "valid_unseen"):
        for game in env.unwrapped.games_of("all", split):
            _, info = env.reset(seed=0, options={"split": split, "game": game.key})
            known_types = {game.parent_target.lower(), TOOLS.get(game.task_type, "")}
            seen_inside: set[str] = set()  # what the observations show: visited, and not closed
            while True:
                facts = env.unwrapped.privileged_facts()
                command = facts["next_action"]
                place = command.removeprefix("go to ")
                hidden = command.startswith("go to ") and place not in seen_inside
                if hidden and place.rsplit(" ", 1)[0] not in known_types:
                    assert facts["searching"], (game.key, command)
                if facts["searching"]:
                    searches += 1
                    assert hidden or command == f"open {facts['location']}", (game.key, command)
                    # The teacher then says only what the history shows, never where things hide.
                    text = OfflineTeacher(seed=searches).reflect([ReflectionRequest("obs", facts)])[0]
                    assert text.endswith(command) and not any(name in text for name in facts["target_places"]), text
                _, reward, terminated, truncated, info = env.step(info["valid_actions"].index(command))
                if terminated or truncated:
                    break
                here = env.unwrapped.privileged_facts()["location"]
                if here is not None and f"open {here}" not in info["valid_actions"]:
                    seen_inside.add(here)
            assert info["success"] and reward == 1.0, game.key
    assert searches > 0


# --------------------------------------------------------------------------- data and pipeline
@pytest.fixture(scope="module")
def sft_data(tmp_path_factory: pytest.TempPathFactory, games: Path) -> Path:
    output = tmp_path_factory.mktemp("alfworld_sft") / "alfworld"
    before = snapshot(games)
    DataGenerator(
        env_id=ENV_ID,
        env_kwargs={"data_root": str(games)},
        stages=[PAPER_STAGE, "look_at_obj_in_light", "pick_two_obj_and_place"],
        episodes={"train": 2, "val": 1, "test": 1},
        negatives_per_episode=1,
        output_dir=str(output),
        seed=0,
        prepare=ALFWorldGames(output_dir=str(games), games=GAMES, families=FAMILIES),  # reused as is
    ).run()
    assert snapshot(games) == before  # nothing written into the data folder
    return output


def test_teacher_records(sft_data: Path) -> None:
    records = read_jsonl(sft_data / "policy_sft.train.jsonl", POLICY_FIELDS)
    assert any(r["negative"] for r in records)
    for record in records:
        command = record["valid_actions"][record["action"]]
        assert record["reflection"].endswith(command), record["reflection"]
        assert len(record["reflection"]) <= 200
        for word in ("hint", "oracle", "optimal"):
            assert word not in record["reflection"].lower()
    for record in (r for r in records if r["negative"]):
        mistake = [line for line in record["observation"].splitlines() if line.startswith("> ")][-1]
        assert mistake.removeprefix("> ").split()[0] not in ("look", "inventory", "help", "examine")
    assert {r["split"] for r in read_jsonl(sft_data / "policy_sft.test.jsonl", POLICY_FIELDS)} == {"test"}


def adapt(name: str, folder: Path, data: Path, games: Path) -> Path:
    """A shipped ALFWorld config with tmp paths, the tiny backbone (BPE kept) and tiny budgets."""
    text = (REPO / "configs" / name).read_text()
    text = text.replace("data/alfworld_games", str(games)).replace("data/alfworld", str(data))
    text = text.replace("runs/alfworld", str(folder / "runs"))
    config = yaml.safe_load(text)
    config.pop("warmup", None)
    config["trainer"] |= {"max_steps": 2, "val_check_interval": 2, "limit_val_batches": 1, "log_every_n_steps": 1,
                          "enable_progress_bar": False, "enable_model_summary": False}
    config["trainer"].pop("limit_train_batches", None)
    init = config["model"]["init_args"]
    if "architecture" in init["backbone"]:
        init["backbone"] = init["backbone"] | TINY_BACKBONE | {"max_positions": 1024}
    if "acting" in init:
        init["acting"]["reflection_max_tokens"] = 8
    data_args = config["data"]["init_args"]
    if "batch_size" in data_args:
        data_args["batch_size"] = 4
    for key in ("validation", "evaluation"):
        if key in data_args:
            data_args[key] |= {"episodes": 1, "batch_size": 1, "stages": [PAPER_STAGE, "pick_two_obj_and_place"]}
    if "episodes_per_batch" in data_args:
        data_args["episodes_per_batch"] = 2
    if "rl" in init:
        init["rl"]["minibatch_size"] = 4
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path



def test_pipeline_end_to_end_through_the_cli(tmp_path: Path, games: Path) -> None:
    data = tmp_path / "data"
    config = yaml.safe_load((REPO / "configs" / "alfworld_data.yaml").read_text())
    config["env_kwargs"]["data_root"] = str(games)
    config |= {"output_dir": str(data), "episodes": {"train": 1, "val": 1, "test": 1},
               "stages": [PAPER_STAGE, "pick_two_obj_and_place"]}
    config["prepare"]["init_args"] |= {"output_dir": str(games), "games": GAMES,
                                       "families": [{"task_type": f.task_type, "object": f.object, "receptacle": f.receptacle} for f in FAMILIES]}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(config))
    before = snapshot(games)
    assert run_main(["generate", "--config", str(tmp_path / "data.yaml")]) == 0
    assert (data / "manifest.json").is_file()

    assert run_main(["fit", "--config", str(adapt("alfworld_reflection_sft.yaml", tmp_path, data, games))]) == 0
    assert (tmp_path / "runs" / "models" / "reflection").is_dir()
    policy = adapt("alfworld_policy_sft.yaml", tmp_path, data, games)
    assert run_main(["fit", "--config", str(policy)]) == 0
    rlft = adapt("alfworld_rlft.yaml", tmp_path, data, games)
    assert run_main(["fit", "--config", str(rlft)]) == 0
    results = sorted((tmp_path / "runs" / "rlft").glob("version_*/results.json"))
    assert results, list((tmp_path / "runs").rglob("*"))
    text = results[-1].read_text()
    assert PAPER_STAGE in text and "pick_two_obj_and_place" in text
    assert snapshot(games) == before
    assert os.environ.get("ALFWORLD_DATA")  # the tmp one, set by the module fixture
