#!/usr/bin/env bash
# Install what is missing, lint (ruff) and type-check (mypy) the package, then run the whole
# test suite side by side, printing the 15 slowest steps. A lint or type error fails the script first.
# Coverage of the tuner package: bash scripts/test.sh --cov=tuner
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/python -m ruff check  # the whole tree: tuner, benchmarks, tests, scripts
.venv/bin/python -m mypy  # files and options: [tool.mypy] in pyproject.toml
# Tests run side by side (pytest-xdist): TEST_WORKERS processes (default 4; many tests wait on
# heartbeats, servers and subprocesses), whole modules kept together so that a module's fixture
# (one real sweep) runs once, except the slow modules of independent tests, whose tests go one by
# one to the next free worker (SPLIT_MODULES); each worker pinned to one CPU (tests/conftest.py).
exec .venv/bin/python -m pytest -n "${TEST_WORKERS:-4}" --dist loadscope --durations=15 "$@"
