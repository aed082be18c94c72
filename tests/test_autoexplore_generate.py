"""AutoExplore benchmark: mined questions, splits, determinism, oracle, teacher data, end to end."""

from __future__ import annotations

import ast
import functools
import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from autoexplore_fixtures import TOY_REPO, write_tree
from conftest import REPO, TINY_BACKBONE, run_main

from reflectrl import autoexplore_tasks
from reflectrl.autoexplore_tasks import (
    TASKS_FILE,
    AutoExploreBenchmark,
    TaskMiner,
    first_sentence,
    package_source,
    renamed_copy,
)
from reflectrl.data import POLICY_FIELDS, read_jsonl
from reflectrl.envs.autoexplore import AutoExploreEnv
from reflectrl.errors import ReflectRLError
from reflectrl.generate import KINDS, DataGenerator

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SPLITS = ("train", "val", "test")


def variant(tag: str) -> dict[str, str]:
    """The toy repository with every file made distinct (a tag line), so no content is shared."""
    return {path: text + f"\nTAG_{tag.upper()}_{i} = {i}\n" for i, (path, text) in enumerate(TOY_REPO.items())}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    base = tmp_path_factory.mktemp("corpus")
    roots: dict[str, dict[str, str]] = {}
    for split, names in {"train": ["alpha", "beta"], "val": ["gamma"], "test": ["delta"]}.items():
        roots[split] = {name: str(write_tree(base / name, variant(name))) for name in names}
    return roots


def generator(output: Path, corpus: dict, **changes: Any) -> DataGenerator:
    kwargs: dict[str, Any] = dict(
        env_id="reflectrl/AutoExplore-v0",
        env_kwargs={"tasks_file": str(output / TASKS_FILE), "visible_files": ["*.py"]},
        stages=["depth1", "depth2"],
        episodes={"train": 12, "val": 4, "test": 4},
        negatives_per_episode=1,
        output_dir=str(output),
        seed=3,
        prepare=AutoExploreBenchmark(roots=corpus),
    )
    kwargs.update(changes)
    return DataGenerator(**kwargs)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory, corpus: dict) -> Path:
    output = tmp_path_factory.mktemp("gen") / "autoexplore"
    generator(output, corpus).run()
    return output


def definitions(source: str) -> set[str]:
    tree = ast.parse(source)
    names = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)}
    names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    return names


def docstrings(source: str) -> list[str]:
    tree = ast.parse(source)
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef))]
    return [s for s in (first_sentence(ast.get_docstring(n)) for n in nodes) if s]


def test_mined_questions_have_exactly_one_answer(tmp_path: Path) -> None:
    files = dict(TOY_REPO) | {"dup_a.py": "class Shared:\n    pass\n", "dup_b.py": "class Shared:\n    pass\n"}
    root = write_tree(tmp_path / "toy", files)
    tasks = TaskMiner(tasks_per_file=5).mine(str(root), "toy")
    assert {t.kind for t in tasks} == {"class", "function", "constant", "docstring", "module"}
    assert {t.depth for t in tasks} == {0, 1, 2}
    assert not any(t.about.get("name") == "Shared" for t in tasks)  # defined twice: no question
    for task in tasks:
        assert task.target in files
        if task.kind in ("class", "function", "constant"):
            assert task.about["name"] in task.question
            owners = [path for path, text in files.items() if task.about["name"] in definitions(text)]
            assert owners == [task.target], task
        else:
            assert task.about["summary"] in task.question
            owners = [path for path, text in files.items() if task.about["summary"] in docstrings(text)]
            assert owners == [task.target], task


def test_miner_limits_depth_and_folder_size(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "toy", TOY_REPO)
    assert {t.depth for t in TaskMiner(max_depth=1).mine(str(root), "toy")} == {0, 1}
    # The root lists 5 entries: a limit of 4 leaves nothing reachable.
    assert TaskMiner(max_folder_entries=4).mine(str(root), "toy") == []


def test_miner_skips_hostile_files_and_checks_unparsed_text(tmp_path: Path) -> None:
    """A hostile tree: files the parser cannot take, an undecodable name, non-ASCII names, and
    names that also occur in files that do not parse (too large or not Python 3.11)."""
    files = {
        "deep_sum.py": "X = " + "+".join(["1"] * 5000) + "\n",  # RecursionError in the parser
        "deep_minus.py": "Y = " + "-" * 100_000 + "1\n",  # MemoryError in the parser
        "store_a.py": "class \u0414ataStore:\n    pass\n",  # two names that read alike in ASCII
        "store_b.py": "class \u0416ataStore:\n    pass\n",
        "plain.py": "class PlainName:\n    pass\n\nclass TwiceDefined:\n    pass\n",
        "big.py": "class TwiceDefined:\n    pass\n" + "# filler\n" * 30_000,  # over max_file_bytes
        "newer.py": "type Alias = int\nclass OtherTwice:\n    pass\n",  # not Python 3.11 syntax
        "other.py": "class OtherTwice:\n    pass\n",
    }
    root = write_tree(tmp_path / "hostile", files)
    (root / "bad\udcffname.py").write_bytes(b"class BadlyNamedModule:\n    pass\n")  # not UTF-8
    tasks = TaskMiner(tasks_per_file=5).mine(str(root), "hostile")
    names = {t.about.get("name") for t in tasks}
    assert "PlainName" in names and "BadlyNamedModule" in names
    assert not {"TwiceDefined", "OtherTwice"} & names  # also in big.py / newer.py
    assert not any(name and not name.isascii() for name in names)
    assert not {t.target for t in tasks} & {"deep_sum.py", "deep_minus.py", "big.py", "newer.py"}


def test_miner_refuses_a_tree_it_cannot_walk_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Uniqueness needs every file: a folder too deep or too large to walk is a one-line error."""
    deep = write_tree(tmp_path / "deep", {"a/b/c/e.py": "class DeepDown:\n    pass\n", "top.py": "class TopLevel:\n    pass\n"})
    with pytest.raises(ReflectRLError, match="folder a/b/c is more than 2 levels deep"):
        TaskMiner(max_walk_depth=2).mine(str(deep), "deep")
    assert {t.about["name"] for t in TaskMiner().mine(str(deep), "deep")} == {"DeepDown", "TopLevel"}
    wide = write_tree(tmp_path / "wide", {f"m{i}.py": f"class Wide{i}:\n    pass\n" for i in range(30)})
    small_sandbox = functools.partial(autoexplore_tasks.Sandbox, max_entries=20)
    monkeypatch.setattr(autoexplore_tasks, "Sandbox", small_sandbox)
    with pytest.raises(ReflectRLError, match=r"folder \. has more than 20 entries"):
        TaskMiner().mine(str(wide), "wide")


def test_splits_share_no_repository_and_no_file(tmp_path: Path, corpus: dict) -> None:
    shared = dict(corpus)
    # A test repository that vendors one file of a training repository, byte for byte.
    vendored = write_tree(tmp_path / "vendoring", variant("epsilon") | {"core.py": variant("alpha")["core.py"]})
    shared["test"] = corpus["test"] | {"epsilon": str(vendored)}
    tasks, summary = AutoExploreBenchmark(roots=shared).build(seed=0)
    assert summary["dropped_shared_files"] >= 1
    assert not any(t["repo"] == "epsilon" and t["targets"] == ["core.py"] for t in tasks)
    contents: dict[str, set[bytes]] = {split: set() for split in SPLITS}
    repos: dict[str, set[str]] = {split: set() for split in SPLITS}
    for task in tasks:
        contents[task["split"]].add((Path(task["root"]) / task["targets"][0]).read_bytes())
        repos[task["split"]].add(task["repo"])
    for i, first in enumerate(SPLITS):
        for second in SPLITS[i + 1 :]:
            assert not contents[first] & contents[second]
            assert not repos[first] & repos[second]
    with pytest.raises(ReflectRLError, match="in both"):
        AutoExploreBenchmark(roots={"train": {"a": str(vendored)}, "test": {"a": str(vendored)}})
    with pytest.raises(ReflectRLError, match="overlap"):
        AutoExploreBenchmark(roots={"train": {"a": str(vendored)}, "test": {"b": str(vendored / "io")}}).build(0)


def test_package_source_and_missing_package() -> None:
    root, version = package_source("yaml")
    assert Path(root, "__init__.py").is_file() and version.startswith("PyYAML ")
    with pytest.raises(ReflectRLError, match="no_such_package_xyz"):
        package_source("no_such_package_xyz")
    with pytest.raises(ReflectRLError, match="not an installed package with a source folder"):
        package_source("typing_extensions")  # a single module, no tree to explore


def test_generated_files_and_manifest(generated: Path) -> None:
    manifest = json.loads((generated / "manifest.json").read_text())
    assert manifest["args"]["prepare"]["class_path"] == "reflectrl.autoexplore_tasks.AutoExploreBenchmark"
    assert [r["repo"] for r in manifest["prepared"]["repositories"]] == ["alpha", "beta", "gamma", "delta"]
    assert {f"{kind}.{split}.jsonl" for kind in KINDS for split in SPLITS} | {"manifest.json", TASKS_FILE} == {
        p.name for p in generated.iterdir()
    }
    assert manifest["oracle_failures"] == 0 and manifest["negatives"] > 0


def test_byte_identical_across_runs(generated: Path, corpus: dict, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generator(again, corpus, env_kwargs={"tasks_file": str(generated / TASKS_FILE), "visible_files": ["*.py"]}).run()
    for path in generated.iterdir():
        if path.name == "manifest.json":  # names its own tasks_file path: compare without it
            first, second = (json.loads((d / path.name).read_text()) for d in (generated, again))
            for manifest in (first, second):
                manifest["env_kwargs"].pop("tasks_file")
                manifest["args"]["env_kwargs"].pop("tasks_file")
            assert first == second
        else:
            assert (again / path.name).read_bytes() == path.read_bytes(), path.name


def test_oracle_solves_every_task_in_shortest_steps(generated: Path) -> None:
    env = AutoExploreEnv(tasks_file=str(generated / TASKS_FILE), visible_files=["*.py"])
    assert len(env.tasks) > 20
    for index, task in enumerate(env.tasks):
        _, info = env.reset(seed=index, options={"task": index})
        steps, done = 0, False
        while not done:
            _, _, terminated, truncated, info = env.step(env.oracle_actions()[0])
            steps, done = steps + 1, terminated or truncated
        assert info["success"] and steps == task.depth + 1 <= env.horizon


def test_records_negatives_and_reflections(generated: Path) -> None:
    records = read_jsonl(generated / "policy_sft.train.jsonl", POLICY_FIELDS)
    tasks = {json.loads(line)["id"]: json.loads(line) for line in (generated / TASKS_FILE).read_text().splitlines()}
    assert {r["stage"] for r in records} == {"depth1", "depth2"}
    negatives = [r for r in records if r["negative"]]
    assert negatives
    for record in records:
        command = record["valid_actions"][record["action"]]
        assert record["reflection"].endswith(command), record["reflection"]  # the plan names the move
        assert record["action"] in record["optimal_actions"]
        for word in ("hint", "oracle", "optimal"):
            assert word not in record["reflection"].lower()
    for record in negatives:
        history = [line for line in record["observation"].splitlines() if line.startswith("History: ")][0]
        assert history.split("; ")[-1].removeprefix("History: ").startswith("cat ")  # a wrong file was read
        assert f"Output of {history.split('; ')[-1].removeprefix('History: ')}:" in record["observation"]
    # Every recorded task belongs to its record's split.
    assert all(r["split"] == "train" for r in records)
    assert {t["split"] for t in tasks.values()} == set(SPLITS)


def test_no_negative_reads_the_right_file(tmp_path: Path) -> None:
    """A folder holding only the target: no wrong sibling to read, so no negative (any other
    non-optimal action would be `cat` of the right file, which is no mistake)."""
    root = write_tree(tmp_path / "solo", {"pkg/answer.py": "class Foo:\n    pass\n"})
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"id": "solo", "question": "Which file defines the class Foo?",
                                 "targets": ["pkg/answer.py"], "root": str(root), "split": "train"}) + "\n")
    output = tmp_path / "data"
    DataGenerator(env_id="reflectrl/AutoExplore-v0", env_kwargs={"tasks_file": str(tasks)}, stages=["all"],
                  episodes={"train": 3, "val": 0, "test": 0}, negatives_per_episode=2, output_dir=str(output),
                  seed=0).run()
    records = read_jsonl(output / "policy_sft.train.jsonl", POLICY_FIELDS)
    assert records and not any(r["negative"] for r in records)
    assert not any("answer.py is the wrong file" in r["reflection"] for r in records)


# ------------------------------------------------------------------------------------- end to end
def adapt(name: str, folder: Path, data: Path, **changes: Any) -> Path:
    """A shipped config with tmp paths, the tiny backbone and tiny budgets."""
    text = (REPO / "configs" / name).read_text()
    text = text.replace("data/autoexplore", str(data)).replace("runs/autoexplore", str(folder / "runs"))
    config = yaml.safe_load(text)
    config.pop("warmup", None)
    config["trainer"] |= {"max_steps": 2, "val_check_interval": 2, "limit_val_batches": 1, "log_every_n_steps": 1,
                          "enable_progress_bar": False, "enable_model_summary": False}
    config["trainer"].pop("limit_train_batches", None)
    init = config["model"]["init_args"]
    if "architecture" in init["backbone"]:
        init["backbone"] = {**TINY_BACKBONE, "max_positions": 2048, "init_seed": 0}
    if "acting" in init:
        init["acting"]["reflection_max_tokens"] = 8
    data_args = config["data"]["init_args"]
    data_args["batch_size"] = 4 if "batch_size" in data_args else None
    data_args = {k: v for k, v in data_args.items() if v is not None}
    for key in ("validation", "evaluation"):
        if key in data_args:
            data_args[key] |= {"episodes": 2, "batch_size": 2}
    if "episodes_per_batch" in data_args:
        data_args["episodes_per_batch"] = 2
    config["data"]["init_args"] = data_args
    for key, value in changes.items():
        config[key] = value
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path



def test_pipeline_end_to_end_through_the_cli(tmp_path: Path, corpus: dict) -> None:
    data = tmp_path / "data"
    data_config = yaml.safe_load((REPO / "configs" / "autoexplore_data.yaml").read_text())
    data_config["env_kwargs"]["tasks_file"] = str(data / TASKS_FILE)
    data_config |= {"output_dir": str(data), "episodes": {"train": 6, "val": 2, "test": 2}}
    data_config["prepare"]["init_args"] = {"roots": corpus}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(data_config))
    assert run_main(["generate", "--config", str(tmp_path / "data.yaml")]) == 0
    assert (data / TASKS_FILE).is_file()

    assert run_main(["fit", "--config", str(adapt("autoexplore_reflection_sft.yaml", tmp_path, data))]) == 0
    assert (tmp_path / "runs" / "models" / "reflection").is_dir()
    policy = adapt("autoexplore_policy_sft.yaml", tmp_path, data)
    assert run_main(["fit", "--config", str(policy)]) == 0
    assert run_main(["test", "--config", str(policy), "--ckpt_path", str(tmp_path / "runs/policy_sft/checkpoints/last.ckpt")]) == 0
    rlft = adapt("autoexplore_rlft.yaml", tmp_path, data)
    assert run_main(["fit", "--config", str(rlft)]) == 0
    results = sorted((tmp_path / "runs" / "rlft").glob("version_*/results.json"))
    assert results, list((tmp_path / "runs").rglob("*"))
    per_stage = json.loads(results[-1].read_text())
    text = json.dumps(per_stage)
    assert "depth1" in text and "depth2" in text


def test_renamed_copy_renames_every_entry_consistently_and_keeps_the_answer() -> None:
    record = {
        "observation": "Task: Which file defines class SummaryWriter?\nFolder: /\nListing: __init__.py summary/ "
        "errors.py util/\nHistory: cat errors.py\nOutput of cat errors.py:\n| from util import x",
        "reflection": "errors.py is not it. The summary folder should hold SummaryWriter. Next: cd summary",
        "valid_actions": ["cd summary", "cd util", "cat __init__.py", "cat errors.py", "id __init__.py", "id errors.py"],
        "action": 0,
    }
    pool = ["alpha", "beta", "gamma", "delta", "summary", "errors"]
    copy = renamed_copy(record, pool, random.Random(0))
    mapping = {old: next(a.split()[1].removesuffix(".py") for a, b in zip(copy["valid_actions"], record["valid_actions"],
               strict=True) if b.split()[1].removesuffix(".py") == old) for old in ("summary", "errors", "util")}
    assert len(set(mapping.values())) == 3 and not set(mapping.values()) & {"summary", "errors", "util"}
    assert copy["valid_actions"][copy["action"]] == f"cd {mapping['summary']}"  # the analysis still names it
    assert copy["reflection"].endswith(f"Next: cd {mapping['summary']}")
    assert f"{mapping['errors']}.py is not it" in copy["reflection"]
    assert f"Listing: __init__.py {mapping['summary']}/ {mapping['errors']}.py {mapping['util']}/" in copy["observation"]
    assert f"from {mapping['util']} import x" in copy["observation"]  # whole words everywhere
    assert "SummaryWriter" in copy["observation"]  # part of a longer word: untouched
    assert "cat __init__.py" in copy["valid_actions"]
    assert record["valid_actions"][0] == "cd summary"  # the original is not modified
    assert renamed_copy(record, ["alpha"], random.Random(0)) == record  # too small a pool: unchanged


def test_renamed_policy_copies_replace_the_training_policy_records(corpus: dict, tmp_path: Path, generated: Path) -> None:
    output = tmp_path / "renamed"
    generator(output, corpus, prepare=AutoExploreBenchmark(roots=corpus, renamed_policy_copies=2)).run()
    for name in ("policy_sft.train.jsonl", "policy_sft_positive.train.jsonl"):
        original, renamed = read_jsonl(generated / name, POLICY_FIELDS), read_jsonl(output / name, POLICY_FIELDS)
        assert len(renamed) == 2 * len(original)
        assert [r["observation"] for r in renamed] != [r["observation"] for r in original for _ in range(2)]
        for before, after in zip((r for r in original for _ in range(2)), renamed, strict=True):
            assert after["action"] == before["action"] and len(after["valid_actions"]) == len(before["valid_actions"])
    for name in ("reflection_sft.train.jsonl", "policy_sft.val.jsonl", "plain_sft.train.jsonl", TASKS_FILE):
        assert (output / name).read_bytes() == (generated / name).read_bytes(), name
    with pytest.raises(ReflectRLError, match="renamed_policy_copies must be >= 0"):
        AutoExploreBenchmark(roots=corpus, renamed_policy_copies=-1)
