"""Shared fixtures: a small generated Taxi dataset and tiny per-test Lightning configs.

Everything is offline and CPU-only: the models are the embedded 2-layer, 32-wide GPT-2 over
the byte tokenizer (built from a config, no hub), and every file a run writes (logs,
checkpoints, exports) goes under pytest's tmp folders.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from reflectrl.backbone import BackboneConfig
from reflectrl.cli import main
from reflectrl.generate import DataGenerator

REPO = Path(__file__).resolve().parents[1]
CONF = Path(__file__).resolve().parent / "conf"
TAXI = "reflectrl/DangerousTaxi-v0"

TINY_BACKBONE: dict[str, Any] = {
    "architecture": "gpt2",
    "num_layers": 2,
    "hidden_size": 32,
    "num_heads": 2,
    "max_positions": 512,
}
"""The 2-layer, 32-wide GPT-2 every test trains (prompts are < 512 bytes = tokens)."""

SMALL_EPISODES = {"train": 6, "val": 2, "test": 2}
"""Oracle episodes per split and stage of the shared dataset (a few hundred records, < 1 s)."""


def run_main(args: list[str]) -> int | str | None:
    """Run ``reflectrl``'s ``main(args)``; its SystemExit code, 0 when it returns normally.

    ``sys.argv`` is swapped for the call: LightningCLI warns when it holds pytest's arguments.
    """
    argv, sys.argv = sys.argv, ["reflectrl"]
    try:
        main(args)
    except SystemExit as stop:
        return stop.code
    finally:
        sys.argv = argv
    return 0


def tiny_backbone(**changes: Any) -> BackboneConfig:
    return BackboneConfig(**{**TINY_BACKBONE, **changes})


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tiny models on one CPU thread (restored afterwards).

    A 32-wide model gains nothing from a second thread, and on a busy 2-core machine
    intra-op threads that wait for each other make steps many times slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def taxi_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Taxi dataset (all stages and splits, with negatives), generated once per session."""
    output = tmp_path_factory.mktemp("taxi_data") / "taxi"
    DataGenerator(episodes=SMALL_EPISODES, negatives_per_episode=1, output_dir=str(output), seed=0).run()
    return output


def _set_dotted(config: dict[str, Any], dotted: str, value: Any) -> None:
    node = config
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


def _fill_paths(node: Any, paths: dict[str, str]) -> Any:
    """Replace the RUNS / EXPORTS / DATA placeholders at the start of every string value."""
    if isinstance(node, dict):
        return {key: _fill_paths(value, paths) for key, value in node.items()}
    if isinstance(node, list):
        return [_fill_paths(value, paths) for value in node]
    if isinstance(node, str):
        head, sep, tail = node.partition("/")
        if head in paths:
            return paths[head] + sep + tail
    return node


def write_config(
    template: str,
    folder: Path,
    data_dir: Path,
    *,
    runs: Path | None = None,
    exports: Path | None = None,
    name: str | None = None,
    **changes: Any,
) -> Path:
    """Write ``tests/conf/{template}.yaml`` into ``folder`` with real paths.

    ``RUNS`` (logs, checkpoints) defaults to ``folder/runs``, ``EXPORTS`` to ``folder/exports``;
    ``DATA`` is ``data_dir``. ``changes`` are dotted keys (``"model.init_args.lr"``) set after
    the paths are filled in; ``None`` as a value deletes the key.
    """
    config = yaml.safe_load((CONF / f"{template}.yaml").read_text())
    paths = {
        "RUNS": str(runs or folder / "runs"),
        "EXPORTS": str(exports or folder / "exports"),
        "DATA": str(data_dir),
    }
    config = _fill_paths(copy.deepcopy(config), paths)
    for dotted, value in changes.items():
        if value is None:
            *parents, last = dotted.split(".")
            node = config
            for key in parents:
                node = node[key]
            node.pop(last, None)
        else:
            _set_dotted(config, dotted, value)
    path = folder / f"{name or template}.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def config_writer(tmp_path: Path, taxi_data: Path):
    """``config_writer(template, **changes)``: a tiny config over the shared dataset in tmp_path."""

    def write(template: str, **kwargs: Any) -> Path:
        kwargs.setdefault("name", template)
        return write_config(template, tmp_path, taxi_data, **kwargs)

    return write
