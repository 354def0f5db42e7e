#!/usr/bin/env bash
# The GPU benchmark, for a CUDA machine (H100/H200), run from the repository root:
#   bash benchmarks/gpu_bench.sh start     # starts the whole run in the background (setsid)
#   bash benchmarks/gpu_bench.sh status    # phase and log tail
#   bash benchmarks/gpu_bench.sh collect   # copies the results into $OUT (or $BENCH/out)
# It builds the three kernel variants with `tuner build` from the llama-cpp-python sdist in
# .carry/, writes a random-weight Llama-3-8B-shaped model quantized to Q4_K_M, runs
# `tuner sweep` over builds x batch sizes x flash attention x KV types at 2048+128 tokens, then
# benchmarks/fidelity.py (tuner vs llama-bench of the same build, chosen vs defaults).
# Needs: nvcc, cmake, ninja, python3 with numpy/pandas/rich/pyyaml/scikit-build-core; missing
# Python packages as wheels in .whl/ (see docs/benchmarks.md).
set -uo pipefail
BENCH=${BENCH:-/tmp/bench}
SDIST=${SDIST:-.carry/llama-cpp-python-0.3.36-src.tar.gz}
ARCH=${CUDA_ARCH:-90}
MODEL=$BENCH/llama3-8b-shape-q4_k_m.gguf
VARIANTS=${VARIANTS:-default force-cublas force-mmq}
JOBS=${JOBS:-6}
export PYTHONUNBUFFERED=1

phase() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$BENCH/phase"; }

setup() {
  mkdir -p /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || return 1
  # The Python half of llama-cpp-python only: the libraries come from `tuner build`.
  CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" python3 -m pip install -q --no-deps \
    --no-build-isolation --no-index --target /tmp/site "$SDIST" || return 1
}

run() {
  export PYTHONPATH=/tmp/site:$PWD
  mkdir -p "$BENCH/out"
  phase setup; setup || { phase FAILED setup; return 1; }
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$BENCH/out/gpu.txt"
  phase "build variants + write f16 model"
  for v in $VARIANTS; do
    python3 -m tuner.cli build --variant "$v" --source "$SDIST" --cuda-arch "$ARCH" -j "$JOBS" \
      > "$BENCH/build-$v.log" 2>&1 &
  done
  python3 -c "
import time; from tuner.modelgen import write_llama, SHAPES
t = time.time(); write_llama('$BENCH/f16.gguf', **SHAPES['llama3-8b']); print('f16 written', round(time.time() - t), 's')
" > "$BENCH/modelgen.log" 2>&1
  wait
  for v in $VARIANTS; do
    [ -f "builds/$v/build.json" ] || { phase "FAILED build $v"; tail -20 "$BENCH/build-$v.log"; return 1; }
  done
  python3 -m tuner.cli build --list | tee "$BENCH/out/builds.txt"
  phase quantize
  LLAMA_CPP_LIB_PATH=$PWD/builds/default/lib python3 -c "
import time; from tuner.modelgen import quantize
t = time.time(); quantize('$BENCH/f16.gguf', '$MODEL', 'q4_k_m'); print('quantized', round(time.time() - t), 's')
" >> "$BENCH/modelgen.log" 2>&1 || { phase FAILED quantize; return 1; }
  rm -f "$BENCH/f16.gguf"
  phase sweep
  python3 -m tuner.cli sweep --model "$MODEL" --space "${SPACE:-benchmarks/spaces/h100-8b.yaml}" \
    --prompt-tokens 2048 --gen-tokens 128 --results "$BENCH/results" \
    --out "$BENCH/out/production.yaml" --builds builds > "$BENCH/sweep.log" 2>&1
  echo "sweep exit $?" >> "$BENCH/sweep.log"
  python3 -m tuner.cli report --results "$BENCH/results" --format md -o "$BENCH/out/report.md"
  phase fidelity
  python3 benchmarks/fidelity.py --model "$MODEL" --sweep-results "$BENCH/results" \
    --builds builds --work "$BENCH/fid" --out "$BENCH/out" > "$BENCH/fidelity.log" 2>&1
  echo "fidelity exit $?" >> "$BENCH/fidelity.log"
  phase done
}

case "${1:-status}" in
  start)
    mkdir -p "$BENCH"; : > "$BENCH/phase"
    setsid nohup bash "$0" run > "$BENCH/log" 2>&1 < /dev/null &
    echo "started; poll with: bash $0 status" ;;
  run) run ;;
  status)
    cat "$BENCH/phase" 2>/dev/null; tail -n "${2:-5}" "$BENCH/log" 2>/dev/null
    for f in "$BENCH"/build-*.log; do [ -f "$f" ] && echo "$f: $(tail -n 1 "$f" | cut -c1-150)"; done
    tail -n 3 "$BENCH/modelgen.log" "$BENCH/sweep.log" "$BENCH/fidelity.log" 2>/dev/null ;;
  collect)
    dest=${OUT:-$BENCH/out}
    mkdir -p "$dest"
    [ "$dest" != "$BENCH/out" ] && cp "$BENCH"/out/* "$dest"/ 2>/dev/null
    for s in "$BENCH"/results/*/trials.jsonl; do [ -f "$s" ] && cp "$s" "$dest/trials.jsonl"; done
    tail -n 40 "$BENCH/sweep.log" 2>/dev/null
    cat "$BENCH/out/summary.md" 2>/dev/null || tail -n 30 "$BENCH/fidelity.log" ;;
esac
