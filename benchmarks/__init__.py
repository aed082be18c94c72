"""Benchmarks, each run as ``python -m benchmarks.NAME`` and printing ratios measured in one run.

Benchmarks that play an env act with the acting settings of the shipped RL config (the Taxi ones
``configs/taxi_rlft.yaml``, the ALFWorld one ``configs/alfworld_rlft.yaml``), read from that file
when called so they never drift from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def acting_settings(config: str = "taxi_rlft.yaml") -> dict[str, Any]:
    """The ``model.init_args.acting`` mapping of a shipped config (``configs/<config>``)."""
    return yaml.safe_load((CONFIGS / config).read_text())["model"]["init_args"]["acting"]
