"""Benchmarks, each run as ``python -m benchmarks.NAME`` and printing ratios measured in one run.

The Taxi benchmarks play with the acting settings of ``configs/taxi_rlft.yaml`` (the main
command, whose evaluation uses them too), read from that file when called so they never drift.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def acting_settings(config: str = "taxi_rlft.yaml") -> dict[str, Any]:
    """The ``model.init_args.acting`` mapping of a shipped config (``configs/<config>``)."""
    return yaml.safe_load((CONFIGS / config).read_text())["model"]["init_args"]["acting"]
