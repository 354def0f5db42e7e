#!/usr/bin/env bash
# Install what is missing, lint (ruff) and type-check (mypy) the package, then run the whole
# test suite, printing the 15 slowest steps. A lint or type error fails the script first.
# Coverage of the tuner package: bash scripts/test.sh --cov=tuner
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/python -m ruff check  # the whole tree: tuner, benchmarks, tests, scripts
.venv/bin/python -m mypy  # files and options: [tool.mypy] in pyproject.toml
exec .venv/bin/python -m pytest --durations=15 "$@"
