"""The ``reflectrl`` command: every shipped config parses, the pipeline runs end to end through
``main([...])``, and user errors are one line on stderr with a non-zero exit status."""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import transformers
import yaml
from conftest import REPO, run_main, write_config

from reflectrl.backbone import BackboneConfig, build_backbone

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
DATA_CONFIGS = [c for c in CONFIGS if c.stem.endswith("_data") or "_data_" in c.stem]
LIGHTNING_CONFIGS = [c for c in CONFIGS if c not in DATA_CONFIGS]
RESULT_KEYS = {"env", "stage", "episodes", "success_rate", "mean_return", "crash_rate", "invalid_choice_rate"}
TINY_EPISODES = '{"train": 4, "val": 2, "test": 1}'

pytestmark = pytest.mark.usefixtures("one_torch_thread")



def one_error_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``main(args)``, expect a non-zero exit and exactly one ``reflectrl: error:`` line."""
    capsys.readouterr()
    code = run_main(args)
    err = capsys.readouterr().err
    assert code not in (0, None), f"expected a failure, got exit code {code!r}"
    errors = [line for line in err.splitlines() if line.startswith("reflectrl: error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err, err
    assert err.rstrip("\n").splitlines()[-1] == errors[0], err  # nothing after the message
    return errors[0]


def warm_up_that_must_not_run(tmp_path: Path) -> tuple[list[str], Path]:
    """``--warmup`` arguments of one step whose output is missing, and the path it would create:
    a check that must fail before the warm-up leaves that path absent."""
    marker = tmp_path / "warm-up-ran"
    step = {"creates": str(marker), "args": ["generate", "--config", str(tmp_path / "never-read.yaml")]}
    return ["--warmup", json.dumps([step])], marker


def interrupted_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Run ``main(args)`` where a KeyboardInterrupt is raised inside: one line, status 130."""
    import signal

    handler = signal.getsignal(signal.SIGINT)
    capsys.readouterr()
    try:
        code = run_main(args)
    except KeyboardInterrupt:  # escaping main would also stop pytest itself
        pytest.fail("KeyboardInterrupt escaped main()")
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT during its shutdown
    assert code == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.rstrip("\n").splitlines()[-1] == "reflectrl: interrupted", err


def runs_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("version_*") if p.is_dir())


# ---------------------------------------------------------------------------------------------- configs
def test_configs_are_found() -> None:
    assert DATA_CONFIGS and LIGHTNING_CONFIGS


@pytest.mark.parametrize("subcommand", ["fit", "test"])
@pytest.mark.parametrize("config", LIGHTNING_CONFIGS, ids=lambda p: p.name)
def test_lightning_config_parses(
    config: Path, subcommand: str, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # In an empty folder: the data and exports the config names do not exist there, and
    # --print_config must neither need them nor create anything.
    monkeypatch.chdir(tmp_path)
    assert run_main([subcommand, "--config", str(config), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    source = yaml.safe_load(config.read_text())
    assert list(tmp_path.iterdir()) == []

    for section in ("model", "data"):
        class_path = printed[section]["class_path"]
        assert class_path.rsplit(".", 1)[-1] == source[section]["class_path"].rsplit(".", 1)[-1]
        module_name, name = class_path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module_name), name)
        if section == "model":
            assert issubclass(cls, pl.LightningModule)
        # Every value the file sets survives parsing (a renamed init arg would fail above).
        for key, value in (source[section].get("init_args") or {}).items():
            got = printed[section]["init_args"][key]
            if isinstance(value, dict):
                assert {k: got[k] for k in value} == value, key
            else:
                assert got == value, key
    for key, value in source.get("trainer", {}).items():
        if key not in ("logger", "callbacks"):
            assert printed["trainer"][key] == value, key


@pytest.mark.parametrize("config", DATA_CONFIGS, ids=lambda p: p.name)
def test_data_config_parses(config: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_main(["generate", "--config", str(config), "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    source = yaml.safe_load(config.read_text())
    assert list(tmp_path.iterdir()) == []
    for key, value in source.items():
        if key in ("teacher", "prepare"):  # class_path objects: printed with their defaults added
            assert_object_config(printed[key], value)
        else:
            assert printed[key] == value, key


def assert_object_config(printed: dict[str, Any], source: dict[str, Any]) -> None:
    """Every value a ``class_path``/``init_args`` block sets survives parsing (nested blocks too)."""
    assert printed["class_path"] == source["class_path"]
    for key, value in (source.get("init_args") or {}).items():
        if isinstance(value, dict) and "class_path" in value:
            assert_object_config(printed["init_args"][key], value)
        else:
            assert printed["init_args"][key] == value, key


# ---------------------------------------------------------------------------------------------- pipeline
@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``generate`` -> ``fit`` reflection SFT -> ``fit`` policy SFT, all through ``main``."""
    root = tmp_path_factory.mktemp("pipeline")
    data = root / "data"
    data_config = REPO / "configs" / "taxi_data.yaml"
    assert run_main(["generate", "--config", str(data_config), "--episodes", TINY_EPISODES,
                      "--output_dir", str(data)]) == 0
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["episodes"]["train"] == {"pickup": 4, "dropoff": 4, "full": 4}
    # every generation argument is recorded, so the data can be told apart and remade
    assert manifest["args"]["wander_fraction"] == 0.5 and manifest["args"]["wander_steps"] == 6

    reflection_config = write_config("reflection_sft_tiny", root, data)
    assert run_main(["fit", "--config", str(reflection_config)]) == 0
    policy_config = write_config("policy_sft_tiny", root, data)
    assert run_main(["fit", "--config", str(policy_config)]) == 0
    return {
        "root": root,
        "data": data,
        "reflection_config": reflection_config,
        "policy_config": policy_config,
        "reflection_runs": root / "runs" / "reflection_sft",
        "policy_runs": root / "runs" / "policy_sft",
        "exports": root / "exports",
    }


@pytest.mark.parametrize("player", ["reflection", "policy"])
def test_fit_writes_a_lean_last_checkpoint_and_an_export(player: str, pipeline: dict[str, Path]) -> None:
    (run,) = runs_of(pipeline[f"{player}_runs"])
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 3
    assert checkpoint["hyper_parameters"]["export_dir"] == str(pipeline["exports"] / player)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["class_path"].endswith("SFTModule")

    export = pipeline["exports"] / player
    model, tokenizer = build_backbone(BackboneConfig(name_or_path=str(export)))
    # The export holds the weights of the checkpoint (the module's "model." prefix stripped).
    weights = dict(model.named_parameters())
    assert {key.removeprefix("model.") for key in checkpoint["state_dict"]} == set(weights)
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(value, weights[key.removeprefix("model.")].detach()), key


def test_test_plays_the_environment_and_writes_results(pipeline: dict[str, Path]) -> None:
    (fit_run,) = runs_of(pipeline["policy_runs"])
    last = fit_run / "checkpoints" / "last.ckpt"
    assert run_main(["test", "--config", str(pipeline["policy_config"]), "--ckpt_path", str(last)]) == 0

    results = [run / "results.json" for run in runs_of(pipeline["policy_runs"]) if (run / "results.json").exists()]
    assert len(results) == 1 and results[0].parent != fit_run
    rows = json.loads(results[0].read_text())
    assert [row["stage"] for row in rows] == ["pickup", "full"]
    for row in rows:
        assert RESULT_KEYS <= set(row)
        assert row["env"] == "reflectrl/DangerousTaxi-v0"
        assert row["episodes"] == 4
        for key in ("success_rate", "crash_rate", "invalid_choice_rate"):
            assert 0.0 <= row[key] <= 1.0
        assert math.isfinite(row["mean_return"])
        # Every episode ends in success, a crash or the horizon: the rates are consistent.
        assert row["success_rate"] + row["crash_rate"] <= 1.0
    # Beside the figures: the CPU kernels and package versions they were measured with.
    measured_with = json.loads((results[0].parent / "environment.json").read_text())
    assert measured_with["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert measured_with["torch_threads"] == 1  # the tiny configs pin cpu_threads
    assert measured_with["packages"]["torch"] == torch.__version__
    assert measured_with["packages"]["transformers"] == transformers.__version__


def test_fast_dev_run_writes_no_checkpoint_and_keeps_the_export(
    config_writer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A smoke test must not replace a real export or leave checkpoints behind."""
    export = tmp_path / "exports" / "reflection"
    export.mkdir(parents=True)
    (export / "sentinel.txt").write_text("the real export\n")
    config = config_writer("reflection_sft_tiny")
    with caplog.at_level("INFO"):
        assert run_main(["fit", "--config", str(config), "--trainer.fast_dev_run", "true"]) == 0
    assert "`max_steps=1` reached" in caplog.text  # it did train one step
    assert sorted(p.name for p in export.iterdir()) == ["sentinel.txt"]
    assert list(tmp_path.rglob("*.ckpt")) == []


def tensorboard_scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


def test_bf16_mixed_fit_on_cpu(config_writer, tmp_path: Path) -> None:
    config = config_writer("reflection_sft_tiny")
    args = ["fit", "--config", str(config), "--trainer.precision", "bf16-mixed", "--trainer.max_steps", "2"]
    assert run_main(args) == 0
    (run,) = runs_of(tmp_path / "runs" / "reflection_sft")
    losses = tensorboard_scalars(run, "train/reflection_loss")
    assert [step for step, _ in losses] == [0, 1]
    assert all(math.isfinite(value) and value > 0 for _, value in losses)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 2
    # Mixed precision keeps float32 weights, and they trained.
    model, _ = build_backbone(BackboneConfig(name_or_path=str(tmp_path / "exports" / "reflection")))
    initial, _ = build_backbone(BackboneConfig(**yaml.safe_load(config.read_text())["model"]["init_args"]["backbone"]))
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(model.transformer.wte.weight, initial.transformer.wte.weight)


def test_help_of_the_module_and_the_console_script() -> None:
    script = Path(sys.executable).parent / "reflectrl"
    assert script.is_file()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    commands = [[sys.executable, "-m", "reflectrl", "--help"], [str(script), "--help"]]
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for command in commands
    ]
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert "Reflect-RL" in out and "generate" in out
        for subcommand in ("fit", "validate", "test", "predict"):
            assert subcommand in out


# ---------------------------------------------------------------------------------------------- errors
def test_unknown_key_on_the_command_line(config_writer, capsys: pytest.CaptureFixture[str]) -> None:
    config = config_writer("policy_sft_tiny")
    line = one_error_line(["fit", "--config", str(config), "--model.init_args.bogus", "1"], capsys)
    assert "model.init_args.bogus" in line


@pytest.mark.parametrize("key", ["model.init_args.bogus", "data.init_args.bogus", "trainer.bogus", "bogus"])
def test_unknown_key_in_a_yaml_file(key: str, config_writer, capsys: pytest.CaptureFixture[str]) -> None:
    config = config_writer("policy_sft_tiny", **{key: 1})
    line = one_error_line(["fit", "--config", str(config)], capsys)
    assert f"'{key}'" in line


def test_missing_data_file(config_writer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere" / "policy_sft.train.jsonl"
    config = config_writer("policy_sft_tiny", **{"data.init_args.train_file": str(missing)})
    line = one_error_line(["fit", "--config", str(config)], capsys)
    assert str(missing) in line
    assert list(tmp_path.rglob("*.ckpt")) == [] and not (tmp_path / "exports").exists()


def test_malformed_jsonl_line_names_file_and_line(
    config_writer, taxi_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = (taxi_data / "policy_sft.train.jsonl").read_text().splitlines()
    lines[2] = lines[2][: len(lines[2]) // 2]  # line 3 cut in half
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(lines) + "\n")
    config = config_writer("policy_sft_tiny", **{"data.init_args.train_file": str(broken)})
    line = one_error_line(["fit", "--config", str(config)], capsys)
    assert f"{broken}:3:" in line and "invalid JSON" in line
    assert list(tmp_path.rglob("*.ckpt")) == [] and not (tmp_path / "exports").exists()


def test_test_without_test_data_names_the_keys(config_writer, capsys: pytest.CaptureFixture[str]) -> None:
    config = config_writer("policy_sft_tiny", **{"data.init_args.evaluation": None})
    line = one_error_line(["test", "--config", str(config)], capsys)
    assert "'data.init_args.test_file' or 'data.init_args.evaluation'" in line


def test_evaluating_a_reflecting_policy_without_a_reflector(config_writer, capsys: pytest.CaptureFixture[str]) -> None:
    config = config_writer("policy_sft_tiny", **{"model.init_args.reflector": None})
    line = one_error_line(["test", "--config", str(config)], capsys)
    assert "config key 'model.init_args.reflector'" in line


def test_missing_checkpoint_file(config_writer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = config_writer("policy_sft_tiny")
    missing = tmp_path / "runs" / "nope" / "last.ckpt"
    line = one_error_line(["test", "--config", str(config), "--ckpt_path", str(missing)], capsys)
    assert str(missing) in line and "no such checkpoint file" in line


def test_a_missing_checkpoint_fails_before_the_warm_up_runs(
    config_writer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_writer("policy_sft_tiny")
    warm_up, marker = warm_up_that_must_not_run(tmp_path)
    missing = tmp_path / "nope.ckpt"
    args = ["fit", "--config", str(config), *warm_up, "--ckpt_path", str(missing)]
    line = one_error_line(args, capsys)
    assert f"--ckpt_path {missing}: no such checkpoint file" in line
    assert not marker.exists()


def test_an_abbreviated_key_is_not_taken_for_the_full_one(config_writer, capsys: pytest.CaptureFixture[str]) -> None:
    config = config_writer("policy_sft_tiny")
    line = one_error_line(["fit", "--config", str(config), "--trainer.max_step", "7"], capsys)
    assert "--trainer.max_step" in line
    data_config = str(REPO / "configs" / "taxi_data.yaml")
    line = one_error_line(["generate", "--config", data_config, "--overwrit", "true"], capsys)
    assert "--overwrit" in line


@pytest.mark.parametrize("command", ["fit", "generate"])
def test_a_yaml_syntax_error_names_the_file_and_line(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """jsonargparse says only "Problems parsing config", with ``"<unicode string>"`` as the place."""
    good = REPO / "configs" / ("taxi_data.yaml" if command == "generate" else "taxi_policy_sft.yaml")
    broken = tmp_path / "override.yaml"
    broken.write_text("trainer:\n  max_steps: 3\n  callbacks: [1, 2\n")
    capsys.readouterr()
    assert run_main([command, "--config", str(good), f"--config={broken}"]) == 2
    line = one_error_line([command, "--config", str(good), "--config", str(broken)], capsys)
    assert f"config file '{broken}', line 4, column 1: YAML syntax error" in line, line


def test_generate_parse_errors_exit_2_like_fit(capsys: pytest.CaptureFixture[str]) -> None:
    data_config = str(REPO / "configs" / "taxi_data.yaml")
    for args in (["--bogus", "1"], ["--episodes", "x"], ["--config", "no/such.yaml"]):
        capsys.readouterr()
        assert run_main(["generate", "--config", data_config, *args]) == 2, args
    assert run_main(["fit", "--config", "no/such.yaml"]) == 2


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("--model.init_args.backbone.name_or_path", "no/such/folder", "cannot load model 'no/such/folder'"),
        ("--model.init_args.lr", "-1", "config key 'model.init_args.lr': must be > 0"),
        ("--data.init_args.batch_size", "0", "config key 'data.init_args.batch_size': must be >= 1"),
    ],
)
def test_a_bad_value_raised_while_building_is_one_line(
    key: str, value: str, expected: str, config_writer, capsys: pytest.CaptureFixture[str]
) -> None:
    """jsonargparse wraps such errors in a Union-subtypes report with a dump of the config."""
    config = config_writer("policy_sft_tiny")
    assert expected in one_error_line(["fit", "--config", str(config), key, value], capsys)


def test_unreadable_checkpoints_are_one_line(
    pipeline: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (fit_run,) = [run for run in runs_of(pipeline["policy_runs"]) if (run / "checkpoints").is_dir()]
    good = (fit_run / "checkpoints" / "last.ckpt").read_bytes()
    cases = {"truncated.ckpt": good[: len(good) // 2], "random.ckpt": bytes(range(256)) * 8, "empty.ckpt": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "folder.ckpt").mkdir()
    for name in [*cases, "folder.ckpt"]:
        line = one_error_line(["test", "--config", str(pipeline["policy_config"]), "--ckpt_path", str(tmp_path / name)], capsys)
        assert name in line and ("not a readable PyTorch checkpoint" in line or "is a folder" in line), line
    # a checkpoint of another stage (the reflection SFT one under the policy config)
    (reflection_run,) = [run for run in runs_of(pipeline["reflection_runs"]) if (run / "checkpoints").is_dir()]
    other = reflection_run / "checkpoints" / "last.ckpt"
    line = one_error_line(["test", "--config", str(pipeline["policy_config"]), "--ckpt_path", str(other)], capsys)
    assert "written by ReflectionSFTModule, but the config builds PolicySFTModule" in line
    assert list(tmp_path.rglob("results.json")) == []


def test_test_from_last_without_any_checkpoint(config_writer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = config_writer("policy_sft_tiny")
    line = one_error_line(["test", "--config", str(config), "--ckpt_path", "last"], capsys)
    assert "--ckpt_path last: no last checkpoint in" in line
    assert list(tmp_path.rglob("results.json")) == []


def test_missing_reflector_export_at_test_time(
    pipeline: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reflection export the policy checkpoint names has gone (moved or deleted)."""
    missing = tmp_path / "moved" / "reflection"
    (fit_run,) = [run for run in runs_of(pipeline["policy_runs"]) if (run / "checkpoints").is_dir()]
    checkpoint: dict[str, Any] = torch.load(fit_run / "checkpoints" / "last.ckpt", map_location="cpu",
                                            weights_only=True)
    checkpoint["hyper_parameters"]["reflector"]["name_or_path"] = str(missing)
    ckpt = tmp_path / "last.ckpt"
    torch.save(checkpoint, ckpt)
    config = write_config("policy_sft_tiny", tmp_path, pipeline["data"],
                          **{"model.init_args.reflector.name_or_path": str(missing)})
    line = one_error_line(["test", "--config", str(config), "--ckpt_path", str(ckpt)], capsys)
    assert str(missing) in line
    assert list(tmp_path.rglob("results.json")) == []


def test_generate_refuses_a_non_empty_output_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "data"
    output.mkdir()
    (output / "policy_sft.train.jsonl").write_text('{"old": true}\n')
    (output / "notes.txt").write_text("keep me\n")
    before = {p.name: p.read_bytes() for p in output.iterdir()}
    args = ["generate", "--config", str(REPO / "configs" / "taxi_data.yaml"), "--episodes", TINY_EPISODES,
            "--output_dir", str(output)]
    line = one_error_line(args, capsys)
    assert str(output) in line and "overwrite" in line
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no staging folder left behind
    # With overwrite it is replaced.
    assert run_main([*args, "--overwrite", "true"]) == 0
    assert not (output / "notes.txt").exists() and (output / "manifest.json").is_file()
    shutil.rmtree(output)


def test_cpu_threads_key_pins_torch_threads(config_writer) -> None:
    before = torch.get_num_threads()  # the module's one_torch_thread setting, restored below
    try:
        torch.set_num_threads(2)
        config = config_writer("reflection_sft_tiny", cpu_threads=1)
        assert run_main(["fit", "--config", str(config), "--trainer.fast_dev_run", "true"]) == 0
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        args = ["fit", "--config", str(config), "--trainer.fast_dev_run", "true", "--cpu_threads", "null"]
        assert run_main(args) == 0
        assert torch.get_num_threads() == 2  # null leaves torch's setting alone
    finally:
        torch.set_num_threads(before)


def test_cpu_threads_below_one(config_writer, capsys: pytest.CaptureFixture[str]) -> None:
    config = config_writer("reflection_sft_tiny", cpu_threads=0)
    line = one_error_line(["fit", "--config", str(config)], capsys)
    assert "'cpu_threads'" in line and "got 0" in line


def test_every_cpu_config_pins_one_thread() -> None:
    for config in LIGHTNING_CONFIGS:
        text = yaml.safe_load(config.read_text())
        if text.get("trainer", {}).get("accelerator") == "cpu":
            assert text.get("cpu_threads") == 1, config.name


def test_a_bad_trainer_value_is_one_line(config_writer, capsys: pytest.CaptureFixture[str]) -> None:
    """Lightning's own check of a Trainer value (MisconfigurationException) is a user error too."""
    config = config_writer("policy_sft_tiny")
    line = one_error_line(["fit", "--config", str(config), "--trainer.max_steps", "-2"], capsys)
    assert "max_steps" in line and "-2" in line


def test_a_bad_trainer_value_fails_before_the_warm_up_runs(
    config_writer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The warm-up (data, both SFT stages) takes minutes: a Trainer value Lightning refuses must
    fail before it starts, not when the RL Trainer is finally built."""
    config = config_writer("policy_sft_tiny")
    warm_up, marker = warm_up_that_must_not_run(tmp_path)
    args = ["fit", "--config", str(config), *warm_up, "--trainer.strategy", "not-a-strategy"]
    line = one_error_line(args, capsys)
    assert "config key 'trainer'" in line and "not-a-strategy" in line
    assert not marker.exists()


def test_a_value_outside_a_literal_lists_the_allowed_ones(config_writer, capsys: pytest.CaptureFixture[str]) -> None:
    """jsonargparse's report on ``precision`` names only its first alternative (``int``)."""
    line = one_error_line(["fit", "--config", str(config_writer("policy_sft_tiny")), "--trainer.precision", "bf17"], capsys)
    assert "config key 'trainer.precision': got 'bf17'; expected one of" in line
    assert "'bf16-mixed'" in line and "'32-true'" in line and "null" in line


@pytest.mark.parametrize("args", [[], ["bogus"]])
def test_a_missing_or_unknown_subcommand_names_generate(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    line = one_error_line(args, capsys)
    assert "fit" in line and "reflectrl generate --config FILE" in line


def test_ctrl_c_during_generate_is_one_line_and_status_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import reflectrl.generate

    def interrupted(self: reflectrl.generate.DataGenerator) -> dict[str, Any]:
        raise KeyboardInterrupt

    monkeypatch.setattr(reflectrl.generate.DataGenerator, "run", interrupted)
    args = ["generate", "--config", str(REPO / "configs" / "taxi_data.yaml"), "--episodes", TINY_EPISODES,
            "--output_dir", str(tmp_path / "data")]
    interrupted_main(args, capsys)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_fit_is_one_line_and_status_130(
    config_writer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Lightning catches Ctrl-C inside the Trainer and exits with status 1 after its graceful
    shutdown; the CLI must still report the interruption as one line and status 130."""
    from reflectrl.modules.reflection_sft import ReflectionSFTModule

    def interrupted(self: ReflectionSFTModule, batch: Any, batch_idx: int) -> torch.Tensor:
        raise KeyboardInterrupt

    monkeypatch.setattr(ReflectionSFTModule, "training_step", interrupted)
    interrupted_main(["fit", "--config", str(config_writer("reflection_sft_tiny"))], capsys)
