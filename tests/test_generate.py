"""The data generator: oracle records, negatives, splits, determinism, output safety, CLI."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium
import pytest
from gymnasium import spaces

import reflectrl.envs  # noqa: F401  (registers the envs)
from reflectrl.data import PLAIN_FIELDS, POLICY_FIELDS, REFLECTION_FIELDS, DataError, read_jsonl
from reflectrl.errors import ReflectRLError
from reflectrl.generate import KINDS, DataGenerator, generate_main
from reflectrl.teachers import OfflineTeacher, ReflectionRequest, Teacher
from reflectrl.teachers.offline import taxi_move_word

TAXI = "reflectrl/DangerousTaxi-v0"
REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "test")
SCHEMAS = {
    "reflection_sft": REFLECTION_FIELDS,
    "policy_sft": POLICY_FIELDS,
    "plain_sft": PLAIN_FIELDS,
    "reflection_sft_positive": REFLECTION_FIELDS,
    "policy_sft_positive": POLICY_FIELDS,
}
SMALL = {"train": 4, "val": 2, "test": 2}


def small_generator(output_dir: Path, **changes: Any) -> DataGenerator:
    kwargs: dict[str, Any] = dict(episodes=SMALL, negatives_per_episode=2, output_dir=str(output_dir), seed=5)
    kwargs.update(changes)
    return DataGenerator(**kwargs)


@pytest.fixture(scope="module")
def taxi_data(tmp_path_factory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("gen") / "taxi"
    summary = small_generator(output).run()
    return output, summary


def load(output: Path, kind: str, split: str) -> list[dict]:
    return read_jsonl(output / f"{kind}.{split}.jsonl", SCHEMAS[kind])


def last_move_word(text: str) -> str | None:
    found = [
        (m.start(), m.group(0)) for m in re.finditer("north|south|east|west|pick up|drop off", text.lower())
    ]
    return max(found)[1] if found else None


def replay(env, record: dict, prefix: Sequence[dict]) -> tuple[str, dict]:
    """Reset like the generator did and replay the actions of ``prefix`` (positive records)."""
    observation, info = env.reset(
        seed=record["seed"], options={"stage": record["stage"], "split": record["split"]}
    )
    for previous in prefix:
        assert observation == previous["observation"]
        observation, _, _, _, info = env.step(previous["action"])
    return observation, info


# ----------------------------------------------------------------------------- Taxi output
def test_files_validate_and_match_manifest(taxi_data):
    output, summary = taxi_data
    manifest = json.loads((output / "manifest.json").read_text())
    expected = {f"{kind}.{split}.jsonl" for kind in KINDS for split in SPLITS}
    assert {p.name for p in output.iterdir()} == expected | {"manifest.json"}
    assert manifest["files"] == summary["files"]
    assert manifest["env_id"] == TAXI and manifest["args"]["episodes"] == SMALL
    assert manifest["args"]["teacher"]["class_path"] == "reflectrl.teachers.offline.OfflineTeacher"
    negatives = 0
    for split in SPLITS:
        records = {kind: load(output, kind, split) for kind in KINDS}
        for kind, rows in records.items():
            assert manifest["files"][f"{kind}.{split}.jsonl"] == len(rows)
            assert all(row["split"] == split and row["env"] == TAXI for row in rows)
        policy = records["policy_sft"]
        assert [{**r, "reflection": None} for r in policy] == records["plain_sft"]
        assert [{k: r[k] for k in REFLECTION_FIELDS} for r in policy] == records["reflection_sft"]
        assert [r for r in policy if not r["negative"]] == records["policy_sft_positive"]
        assert [r for r in records["reflection_sft"] if not r["negative"]] == records[
            "reflection_sft_positive"
        ]
        negatives += sum(r["negative"] for r in policy)
        assert {r["stage"] for r in policy} == {"pickup", "dropoff", "full"}
        episodes = {(r["stage"], r["seed"]) for r in policy}
        assert len(episodes) == 3 * SMALL[split]  # distinct seeds per (split, stage)
    assert negatives == manifest["negatives"] > 0


def test_positive_records_follow_the_oracle(taxi_data):
    output, _ = taxi_data
    env = gymnasium.make(TAXI)
    episodes: dict[tuple, list[dict]] = {}
    for split in SPLITS:
        for record in load(output, "policy_sft_positive", split):
            episodes.setdefault((split, record["stage"], record["seed"]), []).append(record)
    for records in episodes.values():
        assert [r["step"] for r in records] == list(range(len(records)))
        for i, record in enumerate(records):
            observation, _ = replay(env, record, records[:i])
            assert observation == record["observation"]
            optimal = sorted(env.unwrapped.oracle_actions())
            assert record["optimal_actions"] == optimal and record["action"] == optimal[0]
        # Replaying the whole episode succeeds.
        replay(env, records[-1], records[:-1])
        *_, info = env.step(records[-1]["action"])
        assert info["success"]
    env.close()


def test_negatives_are_real_mistakes_with_optimal_labels(taxi_data):
    output, _ = taxi_data
    safe = gymnasium.make(TAXI, dangerous=False)
    kinds: set[str] = set()
    checked = 0
    for split in SPLITS:
        records = load(output, "policy_sft", split)
        positives = [r for r in records if not r["negative"]]
        for record in (r for r in records if r["negative"]):
            prefix = [
                p
                for p in positives
                if (p["stage"], p["seed"]) == (record["stage"], record["seed"])
                and p["step"] < record["step"] - 1
            ]
            # The wrong action was taken in the state of step record["step"] - 1.
            assert len(prefix) == record["step"] - 1
            # Which action leads from the branching state to the recorded one?
            leading = []
            for action in range(len(record["valid_actions"])):
                replay(safe, record, prefix)
                optimal_before = safe.unwrapped.oracle_actions()
                observation, _, _, _, info = safe.step(action)
                if observation == record["observation"]:
                    leading.append((action, info["event"]))
                    after = sorted(safe.unwrapped.oracle_actions())
                    assert record["optimal_actions"] == after and record["action"] == after[0]
            assert leading, "the negative's state is not one wrong step from the oracle prefix"
            assert all(action not in optimal_before for action, _ in leading)
            kinds |= {event for _, event in leading}
            assert "History: " in record["observation"]
            checked += 1
    assert checked > 0
    assert "moved" in kinds and kinds & {"wall", "illegal_pickup", "illegal_dropoff"}
    safe.close()


def test_reflections_point_to_the_labelled_action(taxi_data):
    output, _ = taxi_data
    for split in SPLITS:
        for record in load(output, "policy_sft", split):
            move = taxi_move_word(record["valid_actions"][record["action"]])
            assert last_move_word(record["reflection"]) == move, record["reflection"]
            assert len(record["reflection"]) <= 160 and "\n" not in record["reflection"]


def test_splits_are_disjoint_by_start_state(taxi_data):
    output, _ = taxi_data
    env = gymnasium.make(TAXI)
    starts: dict[str, set[int]] = {}
    for split in SPLITS:
        for record in load(output, "policy_sft_positive", split):
            if record["step"] == 0:
                _, info = env.reset(seed=record["seed"], options={"stage": record["stage"], "split": split})
                starts.setdefault(split, set()).add(info["start_state"])
    assert not starts["train"] & starts["val"]
    assert not starts["train"] & starts["test"]
    assert not starts["val"] & starts["test"]
    env.close()


def test_byte_identical_across_runs(taxi_data, tmp_path: Path):
    output, _ = taxi_data
    small_generator(tmp_path / "again").run()
    names = sorted(p.name for p in output.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "again").iterdir())
    for name in names:
        assert (output / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    # Another seed gives other episodes.
    small_generator(tmp_path / "other", seed=6).run()
    assert (output / "policy_sft.train.jsonl").read_bytes() != (
        tmp_path / "other" / "policy_sft.train.jsonl"
    ).read_bytes()


# ------------------------------------------------------------------------ output safety
def test_refuses_to_overwrite_and_keeps_old_data(tmp_path: Path):
    output = tmp_path / "data"
    output.mkdir()
    (output / "precious.jsonl").write_text("old\n")
    with pytest.raises(DataError, match="is not empty; set overwrite: true"):
        small_generator(output, episodes={"train": 1}).run()
    assert (output / "precious.jsonl").read_text() == "old\n"

    class FailingTeacher(Teacher):
        def reflect(self, requests):
            raise RuntimeError("teacher offline")

    with pytest.raises(RuntimeError, match="teacher offline"):
        small_generator(output, episodes={"train": 1}, overwrite=True, teacher=FailingTeacher()).run()
    assert [p.name for p in output.iterdir()] == ["precious.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no staging folder left

    summary = small_generator(output, episodes={"train": 1}, overwrite=True).run()
    names = {p.name for p in output.iterdir()}
    assert "precious.jsonl" not in names and "manifest.json" in names
    assert set(summary["files"]) == {f"{kind}.train.jsonl" for kind in KINDS}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    # An existing empty folder is fine without overwrite.
    (tmp_path / "empty").mkdir()
    small_generator(tmp_path / "empty", episodes={"train": 1}).run()


def test_teacher_is_called_in_batches(tmp_path: Path):
    class CountingTeacher(OfflineTeacher):
        def __init__(self) -> None:
            super().__init__()
            self.batches: list[int] = []

        def reflect(self, requests: Sequence[ReflectionRequest]) -> list[str]:
            self.batches.append(len(requests))
            return super().reflect(requests)

    teacher = CountingTeacher()
    summary = small_generator(tmp_path / "out", teacher=teacher, teacher_batch_size=16).run()
    assert sum(teacher.batches) == summary["decisions"]
    assert max(teacher.batches) == 16 and len(teacher.batches) > 1


# ------------------------------------------------------------ generic env (no Taxi code)
class LineEnv(gymnasium.Env):
    """A 1-D corridor: reach the right end. Start states 0..9; split = start % 3 (unless ignored)."""

    ACTIONS = ["step left", "step right", "wait"]

    def __init__(self, dangerous: bool = True, honour_split: bool = True, length: int = 12) -> None:
        self.dangerous, self.honour_split, self.length = dangerous, honour_split, length
        self.observation_space = spaces.Text(max_length=200, charset=string.printable)
        self.action_space = spaces.Discrete(3)
        self.pos = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        options = options or {}
        split = options.get("split")
        starts = list(range(10))
        if split is not None and self.honour_split:
            starts = [s for s in starts if s % 3 == ("train", "val", "test").index(split)]
        self.pos = self.start = starts[int(self.np_random.integers(len(starts)))]
        self.history: list[str] = []
        return self._obs(), self._info()

    def step(self, action):
        self.history.append(self.ACTIONS[action])
        self.pos = min(self.length, max(0, self.pos + (1 if action == 1 else -1 if action == 0 else 0)))
        done = self.pos == self.length
        return self._obs(), 1.0 if done else -0.1, done, False, self._info() | {"event": "moved"}

    def _obs(self) -> str:
        return f"At {self.pos} of {self.length}. History: {', '.join(self.history) or 'none'}"

    def _info(self) -> dict:
        return {
            "valid_actions": list(self.ACTIONS),
            "stage": "walk",
            "success": self.pos == self.length,
            "crashed": False,
            "start_state": self.start,
        }

    def oracle_actions(self) -> list[int]:
        return [1] if self.pos < self.length else []

    def privileged_facts(self) -> dict:
        return {"env": "reflectrl_test/Line-v0", "pos": self.pos, "next_action": "step right"}


class LineTeacher(Teacher):
    def reflect(self, requests):
        return [
            f"Off course: {r.mistake.action}, now step right." if r.mistake else "Step right."
            for r in requests
        ]


if "reflectrl_test/Line-v0" not in gymnasium.registry:
    gymnasium.register("reflectrl_test/Line-v0", entry_point=LineEnv)


def test_generic_env_and_split_check(tmp_path: Path):
    generator = DataGenerator(
        env_id="reflectrl_test/Line-v0",
        stages=["walk"],
        episodes={"train": 3, "val": 2, "test": 2},
        negatives_per_episode=1,
        teacher=LineTeacher(),
        output_dir=str(tmp_path / "line"),
    )
    summary = generator.run()
    records = read_jsonl(tmp_path / "line" / "policy_sft.train.jsonl", POLICY_FIELDS)
    negatives = [r for r in records if r["negative"]]
    assert len(negatives) == 3 and all(r["reflection"].startswith("Off course:") for r in negatives)
    assert all(r["action"] == 1 for r in records)
    assert summary["negatives"] == 7

    # An env whose split option leaks start states across splits is caught.
    leaky = DataGenerator(
        env_id="reflectrl_test/Line-v0",
        env_kwargs={"honour_split": False},
        stages=["walk"],
        episodes={"train": 10, "test": 10},
        teacher=LineTeacher(),
        output_dir=str(tmp_path / "leaky"),
    )
    with pytest.raises(DataError, match="splits 'test' and 'train' share"):
        leaky.run()
    assert not (tmp_path / "leaky").exists()


def test_bad_arguments_are_one_line_errors(tmp_path: Path):
    with pytest.raises(ReflectRLError, match="negatives_per_episode must be >= 0"):
        DataGenerator(negatives_per_episode=-1)
    with pytest.raises(ReflectRLError, match="rejected reset options .*'bogus'"):
        small_generator(tmp_path / "x", stages=["bogus"]).run()
    with pytest.raises(ReflectRLError, match="cannot make env 'nope/Nope-v0'"):
        small_generator(tmp_path / "x", env_id="nope/Nope-v0").run()


# ---------------------------------------------------------------------------- the CLI
def test_generate_main_with_yaml(tmp_path: Path, capsys):
    config = tmp_path / "data.yaml"
    config.write_text(
        "env_id: reflectrl/DangerousTaxi-v0\n"
        "env_kwargs: {}\n"
        "stages: [pickup, full]\n"
        "episodes: {train: 2, val: 1, test: 1}\n"
        "negatives_per_episode: 1\n"
        "teacher:\n  class_path: reflectrl.teachers.OfflineTeacher\n  init_args: {seed: 2}\n"
        f"output_dir: {tmp_path / 'out'}\n"
        "seed: 0\n"
    )
    assert generate_main(["--config", str(config)]) is None
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["args"]["teacher"]["repr"] == "OfflineTeacher(seed=2)"
    assert manifest["args"]["stages"] == ["pickup", "full"]
    # Command-line overrides win over the file.
    generate_main(["--config", str(config), "--seed", "3", "--overwrite", "true"])
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["args"]["seed"] == 3

    config.write_text(config.read_text() + "bogus_key: 1\n")
    with pytest.raises(ReflectRLError) as caught:
        generate_main(["--config", str(config)])
    assert "bogus_key" in str(caught.value) and "\n" not in str(caught.value)


def test_print_config_of_the_repo_config(capsys):
    with pytest.raises(SystemExit) as caught:
        generate_main(["--config", str(REPO / "configs" / "taxi_data.yaml"), "--print_config"])
    assert caught.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: reflectrl.teachers.OfflineTeacher" in printed
    assert "output_dir: data/taxi" in printed and "negatives_per_episode: 1" in printed


def test_wandering_episodes_record_only_oracle_steps_after_a_safe_walk(tmp_path: Path):
    """wander_*: some episodes begin with an unrecorded random walk of safe moves; every recorded
    step is still an oracle step, numbered after the walk, with the walk in its history."""
    output = tmp_path / "wander"
    generator = DataGenerator(episodes={"train": 12}, negatives_per_episode=1, output_dir=str(output), seed=3,
                              wander_fraction=1.0, wander_steps=4)
    generator.run()
    records = load(output, "policy_sft", "train")
    env = gymnasium.make(TAXI)
    first_steps = {}
    for record in records:
        key = (record["stage"], record["seed"])
        first_steps[key] = min(first_steps.get(key, 99), record["step"])
    assert all(1 <= step <= 4 for step in first_steps.values())  # every episode wandered
    for record in records:
        if record["negative"]:
            continue
        moves = record["observation"].splitlines()[-1].removeprefix("History: ").split(", ")
        assert len(moves) == min(record["step"], 6)  # the walk is in the history (the last 6 moves)
        if record["step"] > 6:
            continue
        # Rebuild the state from the history: every move was safe (no crash, episode going on)
        # and the recorded label is the oracle's in exactly that state.
        _, info = env.reset(seed=record["seed"], options={"stage": record["stage"], "split": "train"})
        for move in moves:
            action = ["south", "north", "east", "west", "pickup", "dropoff"].index(move)  # the env's order
            observation, _, terminated, truncated, info = env.step(action)
            assert not (terminated or truncated or info["crashed"])
        assert observation == record["observation"]
        assert record["optimal_actions"] == sorted(env.unwrapped.oracle_actions())
        assert record["action"] == record["optimal_actions"][0]
    env.close()
    again = tmp_path / "again"
    DataGenerator(episodes={"train": 12}, negatives_per_episode=1, output_dir=str(again), seed=3,
                  wander_fraction=1.0, wander_steps=4).run()
    assert (output / "policy_sft.train.jsonl").read_bytes() == (again / "policy_sft.train.jsonl").read_bytes()


class UncopyableTaxi(gymnasium.Wrapper):
    """DangerousTaxi holding state that ``copy.deepcopy`` refuses (as ALFWorld's ctypes game does)."""

    def __init__(self, **kwargs: Any) -> None:
        import threading

        super().__init__(gymnasium.make(TAXI, **kwargs))
        self.lock = threading.Lock()


def test_wandering_with_an_env_that_cannot_be_copied_is_a_one_line_error(tmp_path: Path) -> None:
    if "reflectrl_test/UncopyableTaxi-v0" not in gymnasium.registry:
        gymnasium.register("reflectrl_test/UncopyableTaxi-v0", entry_point=UncopyableTaxi)
    generator = DataGenerator(env_id="reflectrl_test/UncopyableTaxi-v0", episodes={"train": 2},
                              output_dir=str(tmp_path / "out"), wander_fraction=1.0, wander_steps=2)
    with pytest.raises(ReflectRLError, match=r"wander_fraction > 0 needs an env that survives copy.deepcopy"):
        generator.run()
    assert not (tmp_path / "out").exists()
