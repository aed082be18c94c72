"""What produced a result: the machine's CPU and the versions of the packages that change numbers.

Written as ``environment.json`` beside every ``results.json``. A fixed seed reproduces a run bit for
bit only on the same kernels: with the same code, the tiny Taxi players' held-out success moved
by 14 points, most likely because this project's machine changed from an AVX2 to an AVX-512 CPU
(README, Results); a figure is comparable only with figures of the same ``cpu_capability`` and versions.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from typing import Any

import torch

# Packages whose version can change a measured number (kernels, tokenization, RNG streams, loops).
PACKAGES = (
    "torch", "transformers", "tokenizers", "peft", "lightning", "torchmetrics", "numpy", "gymnasium", "safetensors",
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """CPU, torch's kernel level and threads, Python and the package versions, as plain JSON values."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        # The SIMD level ATen dispatches to ("AVX2", "AVX512"): it changes floating-point sums.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packages": {name: _version(name) for name in PACKAGES},
    }
