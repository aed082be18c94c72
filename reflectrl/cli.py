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
import sys
import lightning.pytorch as pl
from lightning.pytorch.cli import ArgsType, LightningCLI

# Imported so that short class names in YAML (``class_path: PolicySFTModule``) resolve.
import reflectrl.datamodules  # noqa: F401
import reflectrl.envs  # noqa: F401
import reflectrl.modules  # noqa: F401
from reflectrl.backbone import BackboneError
from reflectrl.data import DataError
from reflectrl.errors import ReflectRLError
from reflectrl.modules.base import LMModule

USER_ERRORS: tuple[type[BaseException], ...] = (ReflectRLError, DataError, BackboneError, FileNotFoundError)

DESCRIPTION = (
    "Reflect-RL: two-player online RL fine-tuning of language models. Subcommands: fit, validate, "
    "test, predict (Lightning), and `reflectrl generate --config FILE` (teacher datasets)."
)


class ReflectRLCLI(LightningCLI):
    """LightningCLI with reflectrl's defaults (see main)."""


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
            LMModule,
            pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"description": DESCRIPTION},
            args=argv,
        )
    except USER_ERRORS as error:
        print(f"reflectrl: error: {_one_line(error)}", file=sys.stderr)
        raise SystemExit(1) from None
