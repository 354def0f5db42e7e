#!/usr/bin/env bash
# Install what is missing, then run the whole test suite, printing the 15 slowest steps.
# Coverage of the tuner package: bash scripts/test.sh --cov=tuner
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest --durations=15 "$@"
