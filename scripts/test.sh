#!/usr/bin/env bash
# Install what is missing, lint (ruff), then run the whole test suite side by side while mypy
# type-checks the package beside it, printing the 15 slowest steps. A lint error fails the script
# before the tests; a type error fails it after them (mypy's output is printed then).
# Coverage of the tuner package: bash scripts/test.sh --cov=tuner
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# What only the suite needs: Debian's chromium (tests/test_report_html.py opens the HTML report in
# it) and PostgreSQL's server programs (tests/postgres.py starts a private server for the shared-
# study tests). As root with apt they are installed here; otherwise one line says what to install.
need=()
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || need+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${need[*]} for the suite..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "error: the suite needs ${need[*]}: as root, apt-get install -y ${need[*]}" >&2; exit 3
  fi
fi
# llama.cpp's own server, for tests/test_llamaserver.py: built once from the installed version's
# source into builds/cpu (the library and llama-server; several minutes on 2 cores the first time).
.venv/bin/tuner build --variant cpu --server-only --if-missing --builds builds
.venv/bin/python -m ruff check  # the whole tree: tuner, benchmarks, tests, scripts
# mypy (files and options: [tool.mypy] in pyproject.toml) takes about 20 s on one core with no
# cache, as in a fresh clone: beside the tests, not before them.
typed=$(mktemp)
.venv/bin/python -m mypy >"$typed" 2>&1 &
mypy_pid=$!
# A Ctrl-C leaves no mypy running (a background job of a script ignores SIGINT) and no file behind.
trap 'kill "$mypy_pid" 2>/dev/null; rm -f "$typed"' EXIT
# Tests run side by side (pytest-xdist): TEST_WORKERS processes (default 4; many tests wait on
# heartbeats, servers and subprocesses), whole modules kept together so that a module's fixture
# (one real sweep) runs once, except the slow modules of independent tests, whose tests go one by
# one to the next free worker (SPLIT_MODULES); each worker pinned to one CPU (tests/conftest.py).
status=0
.venv/bin/python -m pytest -n "${TEST_WORKERS:-4}" --dist loadscope --durations=15 "$@" || status=$?
mypy_status=0
wait "$mypy_pid" || mypy_status=$?
trap - EXIT
cat "$typed"
rm -f "$typed"
if [ "$mypy_status" != 0 ]; then
  echo "error: mypy found type errors (above)" >&2
  [ "$status" != 0 ] || status=$mypy_status
fi
exit "$status"
