"""The ``reflectrl`` command: LightningCLI in subclass mode, plus ``reflectrl generate``.

    reflectrl fit      --config configs/taxi_policy_sft.yaml
    reflectrl test     --config configs/taxi_policy_sft.yaml --ckpt_path runs/.../last.ckpt
    reflectrl generate --config configs/taxi_data.yaml

Any Trainer option works on the command line (``--trainer.precision bf16-mixed``,
``--trainer.max_steps 10``, ...). Problems with the user's input end in one line on stderr
(``reflectrl: error: ...``) and a non-zero exit status.
"""

from __future__ import annotations

import logging
import pickle
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import jsonargparse
import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

# Imported so that short class names in YAML (``class_path: PolicySFTModule``) resolve.
import reflectrl.datamodules  # noqa: F401
import reflectrl.envs  # noqa: F401
import reflectrl.modules  # noqa: F401
from reflectrl.backbone import BackboneError
from reflectrl.data import DataError
from reflectrl.errors import ReflectRLError, UsageError, config_file_problem, summarize_parse_error

log = logging.getLogger("reflectrl")

# MisconfigurationException: Lightning's own check of a Trainer value (``--trainer.max_steps -2``).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ReflectRLError, DataError, BackboneError, FileNotFoundError, MisconfigurationException
)

INTERRUPTED_STATUS = 130
"""Exit status after Ctrl-C (128 + SIGINT), as a shell reports a command that SIGINT stopped."""

DESCRIPTION = (
    "Reflect-RL: two-player online RL fine-tuning of language models. Subcommands: fit, validate, "
    "test, predict (Lightning), and `reflectrl generate --config FILE` (teacher datasets)."
)


@dataclass
class WarmupStep:
    """A command run before ``fit`` when the file or folder it creates is missing."""

    creates: str
    """Path the step produces (e.g. an SFT export folder); the step is skipped when it exists."""
    args: list[str]
    """Arguments of ``reflectrl`` (e.g. ``[fit, --config, configs/taxi_policy_sft.yaml]``)."""


def pending_warmup(steps: list[WarmupStep]) -> list[WarmupStep]:
    """The steps whose output is missing, in order."""
    return [step for step in steps if not Path(step.creates).exists()]


def check_trainer_values(trainer_config: jsonargparse.Namespace | None) -> None:
    """Build a throwaway Trainer from the config's plain Trainer values (accelerator, devices,
    precision, max_steps, ...): a value Lightning refuses fails now, in one line, not after the
    warm-up steps have spent minutes on data and SFT. Callbacks, loggers and other class specs
    are left out: they are built with the real Trainer."""
    if not isinstance(trainer_config, jsonargparse.Namespace):
        return
    plain = {
        key: value for key, value in trainer_config.as_dict().items()
        if not isinstance(value, dict) and not (isinstance(value, list) and any(isinstance(v, dict) for v in value))
    }
    plain.update(logger=False, callbacks=[], enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    # The real Trainer prints the device summary; the throwaway one stays quiet.
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = rank_zero.level
    rank_zero.setLevel(logging.WARNING)
    try:
        pl.Trainer(**plain)
    except (MisconfigurationException, ValueError, TypeError) as error:
        raise ReflectRLError(f"config key 'trainer': {_one_line(error)}") from None
    finally:
        rank_zero.setLevel(level)


def run_warmup(steps: list[WarmupStep]) -> None:
    """Run the missing warm-up steps in order, each as its own ``reflectrl`` process."""
    for step in steps:
        if Path(step.creates).exists():  # checked when its turn comes: an earlier step may have made it
            continue
        command = [sys.executable, "-m", "reflectrl", *step.args]
        log.info("warm-up: %s is missing, running `reflectrl %s`", step.creates, " ".join(step.args))
        status = subprocess.run(command, check=False).returncode
        if status != 0:
            raise ReflectRLError(f"warm-up step `reflectrl {' '.join(step.args)}` failed with exit code {status}")
        if not Path(step.creates).exists():
            raise ReflectRLError(f"warm-up step `reflectrl {' '.join(step.args)}` did not create {step.creates}")


class ReflectRLCLI(LightningCLI):
    """LightningCLI with reflectrl's two extra top-level keys.

    ``warmup``: steps (data generation, SFT stages) run before ``fit`` when what they create is
    missing, so the RL config works as the very first command on a fresh clone.
    ``evaluate_after_fit``: run ``test`` (held-out evaluation, results.json) right after ``fit``.
    ``cpu_threads``: torch's intra-op CPU threads, set before anything is built.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--warmup", type=list[WarmupStep] | None, default=None, help="Steps run before fit when missing.")
        parser.add_argument("--evaluate_after_fit", type=bool, default=False, help="Run test right after fit.")
        parser.add_argument(
            "--cpu_threads",
            type=int | None,
            default=None,
            help="Torch CPU threads (null: torch's default, one per core). The CPU configs pin 1: the "
            "thread count orders floating-point sums, so a pinned count gives the same numbers on any core count.",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        threads = config.get("cpu_threads") if config is not None else None
        if threads is not None:
            if threads < 1:
                raise ReflectRLError(f"config key 'cpu_threads': must be >= 1 or null, got {threads}")
            torch.set_num_threads(threads)
        if self.subcommand == "fit" and config is not None and config.get("warmup"):
            steps = [WarmupStep(**vars(s)) if not isinstance(s, WarmupStep) else s for s in config.warmup]
            if pending_warmup(steps):
                check_trainer_values(config.get("trainer"))
            run_warmup(steps)

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the checkpoint's hyper-parameters here, before anything is built:
        # a file torch cannot read would end in a torch traceback (even advising weights_only=False).
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt == "last":
            # LightningCLI re-applies a checkpoint's model hyper-parameters only for a file path, so
            # `last` (resolved by the Trainer later) would build the model from the config instead:
            # the run would train with the checkpoint's optimizer (lr included) but record and use
            # the config's other settings. Name the file now, as the Trainer would pick it.
            resolved = _newest_last_checkpoint(self.config[subcommand])
            if resolved is not None:
                ckpt = self.config[subcommand].ckpt_path = str(resolved)
        if ckpt and ckpt not in ("last", "best", "hpc", "registry") and "://" not in str(ckpt):
            path = Path(ckpt)
            if not path.exists():
                # Lightning would find this only when fit starts: after the minutes of any warm-up.
                raise ReflectRLError(f"--ckpt_path {ckpt}: no such checkpoint file")
            if path.is_dir():
                raise ReflectRLError(f"--ckpt_path {ckpt}: is a folder, not a checkpoint file")
            if path.is_file() and not zipfile.is_zipfile(path):
                raise ReflectRLError(f"--ckpt_path {ckpt}: not a readable PyTorch checkpoint (truncated, or not a checkpoint)")
            if path.is_file():
                self._check_checkpoint_class(path, self.config[subcommand])
        try:
            super()._parse_ckpt_path()
        except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
            raise ReflectRLError(f"--ckpt_path {ckpt}: not a readable PyTorch checkpoint ({_one_line(error)[:120]})") from None

    @staticmethod
    def _check_checkpoint_class(path: Path, config: jsonargparse.Namespace) -> None:
        """LightningCLI would take the model class from the checkpoint and pair it with this
        config's data: a checkpoint of another stage must be refused, in one line."""
        try:
            checkpoint = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError, OSError) as error:
            raise ReflectRLError(f"--ckpt_path {path}: not a readable PyTorch checkpoint ({_one_line(error)[:120]})") from None
        written_by = str((checkpoint.get("hyper_parameters") or {}).get("_class_path") or "")
        model = config.get("model")
        wanted = str(model.get("class_path") or "") if isinstance(model, jsonargparse.Namespace) else ""
        if written_by and wanted and written_by.rsplit(".", 1)[-1] != wanted.rsplit(".", 1)[-1]:
            raise ReflectRLError(
                f"--ckpt_path {path}: written by {written_by.rsplit('.', 1)[-1]}, but the config builds "
                f"{wanted.rsplit('.', 1)[-1]}: pass a checkpoint of this stage"
            )

    def _check_last_checkpoint(self) -> None:
        """``--ckpt_path last`` for validate/test: there must be one (fit starts fresh instead)."""
        config = self.config.get(self.subcommand)
        if config is None or config.get("ckpt_path") != "last":
            return
        if not any(cb._find_last_checkpoints(self.trainer) for cb in self.trainer.checkpoint_callbacks):
            folders = sorted({str(cb.dirpath) for cb in self.trainer.checkpoint_callbacks})
            raise ReflectRLError(f"--ckpt_path last: no last checkpoint in {', '.join(folders) or 'any checkpoint folder'}")

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except SystemExit:
            # Lightning catches Ctrl-C inside fit/validate/test, shuts down gracefully and calls
            # sys.exit(1): report it as the interruption it was (main prints one line, status 130).
            if self.trainer.interrupted:
                raise KeyboardInterrupt from None
            raise

    def before_validate(self) -> None:
        self._check_last_checkpoint()

    def before_test(self) -> None:
        self._check_last_checkpoint()

    def before_fit(self) -> None:
        if self.trainer.fast_dev_run:
            # Lightning 2.6's ModelCheckpoint.on_train_end writes last.ckpt even under
            # fast_dev_run (its other saves check it); a smoke run must leave no checkpoint.
            for callback in self.trainer.checkpoint_callbacks:
                callback.save_last = False

    def after_fit(self) -> None:
        config = self.config.get(self.subcommand)
        if config is not None and config.get("evaluate_after_fit") and not self.trainer.fast_dev_run:
            self.trainer.test(self.model, datamodule=self.datamodule)


def _newest_last_checkpoint(config: jsonargparse.Namespace) -> Path | None:
    """The file the Trainer resolves ``ckpt_path="last"`` to: the newest ``last*.ckpt`` in the
    config's ModelCheckpoint folders (those with a ``dirpath``; a default folder is a new logger
    version's, which holds none yet)."""
    trainer = config.get("trainer")
    callbacks = trainer.get("callbacks") if isinstance(trainer, jsonargparse.Namespace) else None
    if isinstance(callbacks, jsonargparse.Namespace):
        callbacks = [callbacks]
    candidates: list[Path] = []
    for callback in callbacks or []:
        if not isinstance(callback, jsonargparse.Namespace) or not str(callback.get("class_path", "")).endswith("ModelCheckpoint"):
            continue
        init_args = callback.get("init_args")
        dirpath = init_args.get("dirpath") if isinstance(init_args, jsonargparse.Namespace) else None
        if dirpath and Path(dirpath).is_dir():
            # Lightning's pattern (ModelCheckpoint._find_last_checkpoints): a .ckpt whose name starts with "last"
            candidates += [p for p in Path(dirpath).iterdir() if p.suffix == ".ckpt" and p.stem.startswith("last") and p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def main(args: ArgsType = None) -> None:
    """Entry point of the ``reflectrl`` console script (and of ``python -m reflectrl``)."""
    argv = list(sys.argv[1:] if args is None else args)  # type: ignore[arg-type]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if argv and argv[0] == "generate":
            from reflectrl.generate import generate_main

            generate_main(argv[1:])
            return
        ReflectRLCLI(
            # Any LightningModule: the LM players (LMModule subclasses) and the prompted baselines.
            pl.LightningModule,
            pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            # Parse errors are raised (not printed as a 20-line usage dump) and reported as one line.
            # allow_abbrev off: argparse would take `--trainer.max_step 7` as `--trainer.max_steps`.
            parser_kwargs={"description": DESCRIPTION, "exit_on_error": False, "allow_abbrev": False},
            args=args,  # None: LightningCLI reads sys.argv itself
        )
    except jsonargparse.ArgumentError as error:
        detail = config_file_problem(argv) if "Problems parsing config" in str(error) else None
        line = detail or summarize_parse_error(str(error))
        if detail is None and re.search(r'"subcommand"|argument subcommand', str(error)):
            line = f"{line.rstrip('.')} (or `reflectrl generate --config FILE` for teacher datasets)"
        print(f"reflectrl: error: {line}", file=sys.stderr)
        raise SystemExit(2) from None
    except UsageError as error:
        print(f"reflectrl: error: {_one_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        # Ctrl-C: what was saved is said above (the generator's journal, Lightning's shutdown).
        print("reflectrl: interrupted", file=sys.stderr)
        raise SystemExit(INTERRUPTED_STATUS) from None
    except USER_ERRORS as error:
        print(f"reflectrl: error: {_one_line(error)}", file=sys.stderr)
        raise SystemExit(1) from None
    except ValueError as error:
        # jsonargparse reports a class whose __init__ raised (a missing model folder, a bad
        # value) as "Does not validate against any of the Union subtypes", with the real error
        # as its cause and a dump of the whole config.
        cause = _user_error_in(error)
        if cause is None:
            raise
        print(f"reflectrl: error: {_one_line(cause)}", file=sys.stderr)
        raise SystemExit(1) from None


def _user_error_in(error: BaseException) -> BaseException | None:
    """The first user error (USER_ERRORS) in ``error``'s chain of causes, if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, USER_ERRORS):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
