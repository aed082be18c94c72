"""AutoExplore env: the env API of ARCHITECTURE.md, commands, rewards, oracle, splits, options."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium
import pytest
from autoexplore_fixtures import TOY_REPO, toy_tasks, write_tree

import reflectrl.envs  # noqa: F401  (registers the envs)
from reflectrl.envs.autoexplore import ENV_ID, AutoExploreEnv, load_tasks_file


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "toy", TOY_REPO)


def make(root: Path, **kwargs) -> AutoExploreEnv:
    return AutoExploreEnv(root=str(root), tasks=toy_tasks(), **kwargs)


def test_registered_and_api_infos(root: Path) -> None:
    env = gymnasium.make(ENV_ID, root=str(root), tasks=toy_tasks())
    obs, info = env.reset(seed=3, options={"stage": "depth1", "split": "train"})
    for key in ("valid_actions", "stage", "success", "crashed", "split", "task_id", "start_state"):
        assert key in info
    assert info["stage"] == "depth1" and info["split"] == "train" and info["depth"] <= 1
    assert obs.splitlines()[:2] == [f"Task: {env.unwrapped.tasks[[t.id for t in env.unwrapped.tasks].index(info['task_id'])].question}", "Folder: /"]
    assert "cd .." not in info["valid_actions"]
    assert info["valid_actions"][:3] == ["cd io", "cd models", "cat __init__.py"]
    _, _, _, _, step_info = env.step(0)
    assert step_info["event"] == "moved" and "cd .." in step_info["valid_actions"]
    facts = env.unwrapped.privileged_facts()
    assert facts["env"] == ENV_ID and json.loads(json.dumps(facts)) == facts


def test_oracle_reaches_every_target_in_shortest_steps(root: Path) -> None:
    env = make(root)
    for index, task in enumerate(env.tasks):
        _, info = env.reset(seed=0, options={"task": index})
        shortest = min(len(parts) for parts in task.targets)  # cd per folder + id
        assert env.steps_to_goal() == shortest
        steps, done = 0, False
        while not done:
            optimal = env.oracle_actions()
            assert optimal and set(optimal) <= set(range(len(info["valid_actions"])))
            _, reward, terminated, truncated, info = env.step(optimal[-1])
            steps, done = steps + 1, terminated or truncated
        assert info["success"] and steps == shortest
        assert env.oracle_actions() == []


def test_oracle_lists_all_shortest_first_moves(root: Path) -> None:
    env = make(root)
    env.reset(seed=0, options={"task": "two"})  # io/writers.py or io/readers.py
    env.step("cd io")
    good = {env._actions[i] for i in env.oracle_actions()}
    assert good == {"id writers.py", "id readers.py"}
    env.step("cd formats")
    assert [env._actions[i] for i in env.oracle_actions()] == ["cd .."]


def test_rewards_success_and_wrong_answer(root: Path) -> None:
    env = make(root, reward_scale=0.5)
    env.reset(seed=0, options={"task": "core"})
    _, reward, terminated, _, info = env.step("id core.py")
    assert terminated and info["success"] and not info["crashed"] and info["event"] == "correct"
    assert reward == pytest.approx(0.5 * (env.step_reward + env.correct_reward))
    env.reset(seed=0, options={"task": "core"})
    _, reward, terminated, _, info = env.step("id helpers.py")
    assert terminated and info["crashed"] and not info["success"] and info["event"] == "wrong"
    assert reward == pytest.approx(0.5 * (env.step_reward + env.wrong_penalty))


def test_non_dangerous_wrong_answer_continues(root: Path) -> None:
    env = make(root, dangerous=False)
    env.reset(seed=0, options={"task": "core"})
    obs, _, terminated, _, info = env.step("id helpers.py")
    assert not terminated and not info["crashed"] and "wrong" in obs
    _, _, terminated, _, info = env.step("id core.py")
    assert terminated and info["success"]


def test_text_commands_are_parsed_like_indices(root: Path) -> None:
    env = make(root)
    _, info = env.reset(seed=0, options={"task": "csv"})
    by_text = env.step("  cd   io/ ")
    env.reset(seed=0, options={"task": "csv"})
    by_index = env.step(info["valid_actions"].index("cd io"))
    assert by_text[0] == by_index[0] and by_text[1] == by_index[1]
    obs, reward, terminated, _, info = env.step("cat nowhere.py")
    assert info["event"] == "invalid" and "no entry nowhere.py" in obs and not terminated
    assert reward == env.step_reward + env.error_penalty
    obs, *_ = env.step("cd readers.py")
    assert "is not a folder" in obs
    obs, _, _, _, info = env.step(99)
    assert info["event"] == "invalid" and "no action number 99" in obs


def test_cat_output_skips_licence_header_and_truncates(root: Path) -> None:
    env = make(root, max_output_lines=2)
    env.reset(seed=0, options={"task": "core"})
    obs, _, _, _, info = env.step("cat core.py")
    assert info["event"] == "read"
    lines = obs.splitlines()
    assert lines[4] == "Output of cat core.py:"
    assert lines[5] == '| """Core machinery of the toy package and its registry."""'
    assert lines[6] == "| REGISTRY_LIMIT = 12" and lines[7] == "| [...]" and len(lines) == 8


def test_horizon_truncates(root: Path) -> None:
    env = make(root, horizon=3)
    env.reset(seed=0, options={"task": "grid"})
    results = [env.step("cat helpers.py") for _ in range(3)]
    assert [r[3] for r in results] == [False, False, True] and not any(r[2] for r in results)
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step(0)


def test_stages_are_depth_buckets_and_splits_follow_tasks(root: Path) -> None:
    env = make(root)
    depths = {task.id: task.depth for task in env.tasks}
    assert depths == {"core": 0, "csv": 1, "grid": 2, "forest": 1, "two": 1}
    assert [env.tasks[i].id for i in env.tasks_of("depth1", None)] == ["core", "csv", "forest", "two"]
    assert [env.tasks[i].id for i in env.tasks_of("depth2", None)] == ["grid"]
    assert [env.tasks[i].id for i in env.tasks_of("all", "test")] == ["grid", "two"]
    for seed in range(20):
        _, info = env.reset(seed=seed, options={"stage": "depth1", "split": "train"})
        assert info["task_id"] in {"core", "csv"}
    with pytest.raises(ValueError, match="no task of stage 'depth2' in split 'train'"):
        env.reset(seed=0, options={"stage": "depth2", "split": "train"})


def test_split_without_labels_is_a_stable_hash_of_the_target(root: Path) -> None:
    tasks = [{"question": "q?", "targets": [path]} for path in TOY_REPO if path.endswith(".py")]
    first = AutoExploreEnv(root=str(root), tasks=tasks)
    second = AutoExploreEnv(root=str(root), tasks=list(reversed(tasks)))
    assert {t.target_paths[0]: t.split for t in first.tasks} == {t.target_paths[0]: t.split for t in second.tasks}


def test_targets_hashing_to_different_splits_need_an_explicit_split(root: Path) -> None:
    files = [path for path in TOY_REPO if path.endswith(".py")]
    by_split = {AutoExploreEnv(root=str(root), tasks=[{"question": "q?", "targets": [p]}]).tasks[0].split: p for p in files}
    assert len(by_split) >= 2, by_split  # the toy repository has files in two hashed splits
    (a, first), (b, second) = sorted(by_split.items())[:2]
    with pytest.raises(ValueError, match=rf"targets fall in different splits by hash \({a}, {b}\); give the task a 'split'"):
        AutoExploreEnv(root=str(root), tasks=[{"question": "q?", "targets": [first, second]}])
    # with an explicit split the task is accepted as given
    env = AutoExploreEnv(root=str(root), tasks=[{"question": "q?", "targets": [first, second], "split": "test"}])
    assert env.tasks[0].split == "test"


def test_reset_is_deterministic_with_augmentations(root: Path) -> None:
    def episode(seed: int) -> list[str]:
        env = make(root, leave_out=0.5, shuffle_actions=True)
        obs, info = env.reset(seed=seed)
        seen = [obs, json.dumps(info["valid_actions"])]
        for _ in range(4):
            obs, _, terminated, truncated, info = env.step(len(info["valid_actions"]) - 1 if info["valid_actions"] else 0)
            seen += [obs, json.dumps(info["valid_actions"])]
            if terminated or truncated:
                break
        return seen

    assert episode(5) == episode(5)
    assert any(episode(5) != episode(seed) for seed in range(6, 10))


def test_leave_out_never_hides_the_way_to_a_target(root: Path) -> None:
    env = make(root, leave_out=0.99)
    for seed in range(10):
        _, info = env.reset(seed=seed, options={"task": "grid"})
        assert info["valid_actions"] == ["cd io"]  # everything else at the root is hidden
        for _ in range(3):
            _, _, terminated, _, info = env.step(env.oracle_actions()[0])
        assert terminated and info["success"]


def test_shuffled_actions_keep_the_same_set(root: Path) -> None:
    plain, shuffled = make(root), make(root, shuffle_actions=True)
    _, a = plain.reset(seed=1, options={"task": "core"})
    _, b = shuffled.reset(seed=1, options={"task": "core"})
    assert sorted(a["valid_actions"]) == sorted(b["valid_actions"]) and a["valid_actions"] != b["valid_actions"]
    assert b["valid_actions"][shuffled.oracle_actions()[0]] == "id core.py"


def test_negative_actions_read_wrong_siblings(root: Path) -> None:
    env = make(root)
    env.reset(seed=0, options={"task": "core"})
    assert [env._actions[i] for i in env.negative_actions()] == ["cat __init__.py", "cat helpers.py"]


def test_tasks_file_and_one_line_errors(root: Path, tmp_path: Path) -> None:
    file = tmp_path / "tasks.jsonl"
    file.write_text("".join(json.dumps(task | {"root": "toy"}) + "\n" for task in toy_tasks()))
    env = gymnasium.make(ENV_ID, tasks_file=str(file))
    _, info = env.reset(seed=0)
    assert info["task_id"] in {t["id"] for t in toy_tasks()}
    file.write_text('{"question": "q?", "targets": ["core.py"], "root": "toy"}\n{not json\n')
    with pytest.raises(ValueError, match=r"tasks.jsonl:2: malformed JSON"):
        load_tasks_file(file)
    cases = [
        (dict(root=str(tmp_path / "missing"), tasks=toy_tasks()), "is not an existing folder"),
        (dict(root=str(root), tasks=[{"question": "q?", "targets": ["../x.py"]}]), "must not contain"),
        (dict(root=str(root), tasks=[{"question": "q?", "targets": ["/etc/passwd"]}]), "relative path inside"),
        (dict(root=str(root), tasks=[{"question": "q?", "targets": ["nope.py"]}]), "not a visible regular file"),
        (dict(root=str(root), tasks=[{"question": "", "targets": ["core.py"]}]), "'question' must be"),
        (dict(root=str(root), tasks=[{"question": "q?", "targets": ["core.py"], "split": "dev"}]), "'split' must be"),
        (dict(tasks_file=str(tmp_path / "none.jsonl")), "does not exist"),
        (dict(root=str(root)), "exactly one of tasks= or tasks_file="),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message) as caught:
            AutoExploreEnv(**kwargs)
        assert "\n" not in str(caught.value)


def test_check_env(root: Path) -> None:
    from gymnasium.utils.env_checker import check_env

    env = make(root)
    check_env(env, skip_render_check=True)


def test_a_bad_tasks_file_fails_the_datamodule_setup_in_one_line(tmp_path: Path) -> None:
    """Under ``fit`` the env is made by the DataModule: the error names the config key and the
    file's line, before any training (evaluation envs included, which ``test`` plays after fit)."""
    from reflectrl.datamodules.episodes import EnvEvalConfig
    from reflectrl.datamodules.online import OnlineEnvDataModule
    from reflectrl.errors import ReflectRLError

    root = write_tree(tmp_path / "repo")
    good = tmp_path / "tasks.jsonl"
    good.write_text("".join(json.dumps(task | {"root": str(root)}) + "\n" for task in toy_tasks()))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + "{not json\n")
    lines = len(good.read_text().splitlines())
    with pytest.raises(ReflectRLError, match=rf"'data.init_args.env_kwargs': .*bad.jsonl:{lines + 1}: malformed JSON"):
        OnlineEnvDataModule(env_id=ENV_ID, env_kwargs={"tasks_file": str(bad)}, stage="all").setup("fit")
    evaluation = EnvEvalConfig(env_id=ENV_ID, env_kwargs={"tasks_file": str(bad)}, stages=["all"], episodes=2, batch_size=2)
    module = OnlineEnvDataModule(env_id=ENV_ID, env_kwargs={"tasks_file": str(good)}, stage="all", evaluation=evaluation)
    with pytest.raises(ReflectRLError, match=r"'data.init_args.evaluation.env_kwargs': .*bad.jsonl"):
        module.setup("fit")
    # a target outside the root is named too
    outside = tmp_path / "outside.jsonl"
    outside.write_text(json.dumps({"question": "q?", "targets": ["../secret.py"], "root": str(root)}) + "\n")
    with pytest.raises(ReflectRLError, match=r"'data.init_args.env_kwargs'"):
        OnlineEnvDataModule(env_id=ENV_ID, env_kwargs={"tasks_file": str(outside)}, stage="all").setup("fit")


def test_a_running_episode_without_valid_actions_is_a_one_line_error(tmp_path: Path) -> None:
    # A root that lists only a link offers no command (reachable with check_targets=False, or a
    # tree changed after the check): the rollout names the env instead of the scorer's bare error.
    from reflectrl.errors import ReflectRLError
    from reflectrl.rollout import Decision, play_episodes

    root = tmp_path / "links_only"
    root.mkdir()
    (root / "target.py").symlink_to(tmp_path / "elsewhere.py")
    task = {"question": "Which file?", "targets": ["target.py"], "split": "train"}
    env = gymnasium.make(ENV_ID, root=str(root), tasks=[task], check_targets=False)
    decided: list[int] = []

    def decide(observations: list[str], valid_actions: list[list[str]]) -> list[Decision]:
        decided.append(len(observations))
        return [Decision(action=0) for _ in observations]

    with pytest.raises(ReflectRLError, match=r"AutoExplore-v0 \(seed 3, stage 'all'\) offers no valid action at step 0"):
        play_episodes([env], [3], {"stage": "all"}, decide)
    assert not decided  # the agent was never asked to choose from nothing
