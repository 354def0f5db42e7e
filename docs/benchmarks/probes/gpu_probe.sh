#!/usr/bin/env bash
# Drift diagnosis on a CUDA machine: build the default kernel variant, write a Qwen2.5-1.5B-shaped
# Q8_0 model, run docs/benchmarks/probes/drift_probe.py. Same conventions as gpu_bench.sh:
#   bash docs/benchmarks/probes/gpu_probe.sh start | status | collect
set -uo pipefail
BENCH=${BENCH:-/tmp/probe}
SDIST=${SDIST:-.carry/llama-cpp-python-0.3.36-src.tar.gz}
MODEL=$BENCH/qwen2.5-1.5b-shape-q8_0.gguf
export PYTHONUNBUFFERED=1
phase() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$BENCH/phase"; }

run() {
  export PYTHONPATH=/tmp/site:$PWD
  mkdir -p "$BENCH/out" /tmp/site
  phase setup
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { phase FAILED wheels; return 1; }
  CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" python3 -m pip install -q --no-deps \
    --no-build-isolation --no-index --target /tmp/site "$SDIST" || { phase FAILED python-half; return 1; }
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$BENCH/out/gpu.txt"
  phase "build default + write model"
  python3 -m tuner build --variant default --source "$SDIST" --cuda-arch 90 -j 16 \
    > "$BENCH/build-default.log" 2>&1 &
  python3 -m tuner.models.modelgen --shape qwen2.5-1.5b --quant f16 --out "$BENCH/f16.gguf" > "$BENCH/modelgen.log" 2>&1
  wait
  [ -f builds/default/build.json ] || { phase "FAILED build"; tail -30 "$BENCH/build-default.log"; return 1; }
  phase quantize
  LLAMA_CPP_LIB_PATH=$PWD/builds/default/lib python3 -c "
from tuner.models.modelgen import quantize; quantize('$BENCH/f16.gguf', '$MODEL', 'q8_0')" >> "$BENCH/modelgen.log" 2>&1 \
    || { phase FAILED quantize; return 1; }
  phase probe
  python3 docs/benchmarks/probes/drift_probe.py --model "$MODEL" --lib builds/default/lib \
    --contexts ${CONTEXTS:-24} --out "$BENCH/out" > "$BENCH/probe.log" 2>&1
  echo "probe exit $?" >> "$BENCH/probe.log"
  phase done
}

case "${1:-status}" in
  start) mkdir -p "$BENCH"; : > "$BENCH/phase"
         setsid nohup bash "$0" run > "$BENCH/log" 2>&1 < /dev/null & echo started ;;
  run) run ;;
  status) cat "$BENCH/phase"; tail -n 3 "$BENCH/log" "$BENCH/build-default.log" "$BENCH/modelgen.log" "$BENCH/probe.log" 2>/dev/null | cut -c1-200 ;;
  collect) mkdir -p "${OUT:-$BENCH/o}"; cp "$BENCH"/out/*.json "$BENCH"/out/gpu.txt "${OUT:-$BENCH/o}/" 2>/dev/null
           cat "$BENCH/probe.log" ;;
esac
