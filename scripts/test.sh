#!/usr/bin/env bash
# The README's test command: create .venv (CPU torch, pinned so pip never pulls a CUDA build),
# install reflectrl with its test and alfworld extras, run ruff and the default (fast) test suite.
# The alfworld extra compiles fast-downward and jericho: about 3.5 min on a fresh machine (no pip
# cache), seconds afterwards; its tests skip (with the reason) if it is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[test,alfworld]"
.venv/bin/ruff check .
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: treating as failure" >&2
  exit 1
fi
exit "$status"
