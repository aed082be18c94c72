"""reflectrl: Reflect-RL as a PyTorch Lightning app."""

from pathlib import Path

SUBPACKAGE_FOLDERS = ("envs", "modules", "datamodules")
"""Top-level folders of the source tree that install as ``reflectrl.<folder>`` (setuptools package-dir)."""


def _source_root() -> Path | None:
    """The source checkout this file lies in, when it is imported from one and not from an install.

    An installed ``reflectrl`` (``pip install .``) holds ``envs/``, ``modules/`` and ``datamodules/``;
    the checkout's ``reflectrl/`` folder does not. Python puts the current folder first on
    ``sys.path`` for ``python -m ...`` and ``python -c ...``, so run in the checkout's root (the
    warm-up steps' ``python -m reflectrl``, ``python -m benchmarks.X``) it imports this folder
    instead of the installed package, and its subpackages must be found next to it.
    """
    here = Path(__file__).resolve().parent
    root = here.parent
    if (here / SUBPACKAGE_FOLDERS[0]).is_dir() or not (root / "pyproject.toml").is_file():
        return None
    if not all((root / name / "__init__.py").is_file() for name in SUBPACKAGE_FOLDERS):
        return None
    return root


_root = _source_root()
if _root is not None:
    __path__.append(str(_root))  # reflectrl.envs -> <checkout>/envs, as package-dir maps it
