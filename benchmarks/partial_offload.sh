#!/usr/bin/env bash
# Issue 31 on a bare H100/H200, run from the repository root (tuner's copy on the GPU machine):
#   bash benchmarks/partial_offload.sh start      # everything in the background (setsid)
#   bash benchmarks/partial_offload.sh wait 540   # wait up to N seconds, print where it is
#   bash benchmarks/partial_offload.sh collect    # results into $OUT, the short table last
# What it does: the wheels and the CUDA llama-cpp-python from the source archive into /tmp/site
# (as benchmarks/gpu_bench.sh's FRESH run), a 7-8B Q4_K_M random-weight model ($SHAPE) written
# by tuner.models.modelgen meanwhile, a llama-bench loading the installed package's CUDA
# libraries (benchmarks/installed_bench.py); then a torch process holding all but $LEAVE_GIB GiB
# of the GPU; `tuner doctor --model` (the memory plan); `tuner sweep --model M` with the default
# space at 2048 + 128 (timed); benchmarks/partial_offload.py compare: the plan's predicted most
# layers against the most llama-bench loads and runs (probed one layer at a time), llama-bench
# pp2048 / tg128 at depth 2048 over the layer counts the sweep searched and both cache types,
# and the sweep's winner beside the best of them.
# Inputs (the lead's checkout carries them): .whl/ and .carry/ (as gpu_bench.sh), else
# $GPU_SHARED (default shared/gpu: wheels/, diskcache-*.whl, the source archive); SDIST= to name
# the archive.
# LEAVE_GIB=4 by default: the issue's case (a 7B Q4_K_M at full offload does not load). With 8
# GiB left a 7-8B Q4_K_M fits whole by the plan (about 4.4-4.7 GiB of GPU memory at n_ubatch 512),
# so the sweep keeps the full-offload space: the 8 GiB case is SHAPE=qwen2.5-14b LEAVE_GIB=8
# (a 9 GiB Q4_K_M; its f16 is 27.5 GiB of disk while it is quantized: checked first).
# SWEEP_ARGS: more `tuner sweep` options (default none: the whole default sweep, under its
# --offload-budget of 900 s since the model does not fit; e.g. "--offload-budget 480" for less
# device time).
set -uo pipefail
BENCH=${BENCH:-/tmp/po}
SHAPE=${SHAPE:-qwen2.5-7b}
QUANT=${QUANT:-q4_k_m}
LEAVE_GIB=${LEAVE_GIB:-4}
ARCH=${CUDA_ARCH:-90}
JOBS=${JOBS:-16}
SWEEP_ARGS=${SWEEP_ARGS-}
# The offline inputs: .whl/ and .carry/ as benchmarks/gpu_bench.sh takes them, else the
# project's shared/gpu (its wheels/, diskcache wheel and source archive; see its README).
GPU_SHARED=${GPU_SHARED:-shared/gpu}
if [ -d .whl ]; then WHEEL_FILES=(.whl/*.whl); else
  WHEEL_FILES=("$GPU_SHARED"/wheels/*.whl "$GPU_SHARED"/diskcache-*.whl); fi
SDIST=${SDIST:-$( ls .carry/llama-cpp-python-*-src.tar.gz "$GPU_SHARED"/llama-cpp-python-*-src.tar.gz 2>/dev/null | head -1 )}
MODEL=$BENCH/$SHAPE-$QUANT.gguf
export PYTHONUNBUFFERED=1

phase() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$BENCH/phase"; }

run() {
  export PYTHONPATH=/tmp/site:$PWD
  mkdir -p "$BENCH/out"
  phase "setup: wheels, CUDA llama-cpp-python ($SDIST), model $SHAPE f16"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "${WHEEL_FILES[@]}" || { phase "FAILED wheels"; return 1; }
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.free --format=csv \
    > "$BENCH/out/gpu.txt"
  local need have
  need=$(python3 benchmarks/partial_offload.py disk --shape "$SHAPE") || { phase "FAILED shape $SHAPE"; return 1; }
  have=$(df --output=avail -BG "$BENCH" | tail -1 | tr -dc 0-9)
  echo "disk: $SHAPE needs $need GiB while it is made, $have GiB free in $BENCH" | tee -a "$BENCH/out/gpu.txt"
  [ "$have" -ge "$need" ] || { phase "FAILED disk: $need GiB needed, $have GiB free (BENCH=$BENCH)"; return 1; }
  python3 -m tuner.models.modelgen --shape "$SHAPE" --quant f16 --out "$MODEL.f16" \
    > "$BENCH/modelgen.log" 2>&1 &
  local gen_pid=$! s=$SECONDS
  if ! python3 -c "import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_gpu_offload())" 2>/dev/null; then
    CMAKE_BUILD_PARALLEL_LEVEL=$JOBS CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$ARCH" \
    CFLAGS="$(python3 tuner/builds/cpuflags.py)" CXXFLAGS="$(python3 tuner/builds/cpuflags.py)" \
      python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/site \
      "$SDIST" > "$BENCH/install.log" 2>&1 || { phase "FAILED install"; tail -20 "$BENCH/install.log"; return 1; }
  fi
  echo "CUDA llama-cpp-python ready in $((SECONDS - s)) s" >> "$BENCH/install.log"
  python3 benchmarks/installed_bench.py --source "$SDIST" --out "$BENCH/bench" -j "$JOBS" \
    > "$BENCH/installed-bench.log" 2>&1 &
  local bench_pid=$!
  wait "$gen_pid" || { phase "FAILED modelgen"; tail -5 "$BENCH/modelgen.log"; return 1; }
  python3 -c "from tuner.models.modelgen import quantize; quantize('$MODEL.f16', '$MODEL', '$QUANT')" \
    >> "$BENCH/modelgen.log" 2>&1 || { phase "FAILED quantize"; return 1; }
  rm -f "$MODEL.f16"
  wait "$bench_pid" || { phase "FAILED llama-bench build"; tail -20 "$BENCH/installed-bench.log"; return 1; }
  phase "hold all but $LEAVE_GIB GiB of the GPU"
  python3 benchmarks/partial_offload.py hold --leave-gib "$LEAVE_GIB" --ready "$BENCH/out/held.json" \
    > "$BENCH/hold.log" 2>&1 &
  local hold_pid=$!
  for _ in $(seq 120); do [ -s "$BENCH/out/held.json" ] && break; sleep 1; done
  [ -s "$BENCH/out/held.json" ] || { phase "FAILED hold"; kill "$hold_pid"; return 1; }
  nvidia-smi --query-gpu=memory.total,memory.used,memory.free --format=csv >> "$BENCH/out/gpu.txt"
  phase "doctor --model"
  python3 -m tuner doctor --model "$MODEL" --n-ctx 2176 > "$BENCH/out/doctor.txt" 2>&1
  phase "sweep (default space, 2048 + 128) $SWEEP_ARGS"
  s=$SECONDS
  # shellcheck disable=SC2086
  python3 -m tuner sweep --model "$MODEL" --prompt-tokens 2048 --gen-tokens 128 --no-build \
    --results "$BENCH/results" --out "$BENCH/out/production.yaml" $SWEEP_ARGS \
    > "$BENCH/out/sweep.log" 2>&1
  echo "sweep exit $? after $((SECONDS - s)) s" >> "$BENCH/out/sweep.log"
  python3 -m tuner report --results "$BENCH/results" > "$BENCH/out/report.txt" 2>&1
  python3 -m tuner report --results "$BENCH/results" --format jsonl -o "$BENCH/out/trials.jsonl" \
    >/dev/null 2>&1
  phase "compare: plan vs llama-bench boundary, llama-bench over the searched layers"
  python3 benchmarks/partial_offload.py compare --model "$MODEL" --results "$BENCH/results" \
    --bench "$BENCH/bench" --out "$BENCH/out" --sweep-log "$BENCH/out/sweep.log" \
    > "$BENCH/out/compare.md" 2> "$BENCH/compare.log"
  kill "$hold_pid" 2>/dev/null
  phase done
}

status() {
  cat "$BENCH/phase" 2>/dev/null; tail -n 3 "$BENCH/log" 2>/dev/null
  for f in "$BENCH"/install.log "$BENCH"/installed-bench.log "$BENCH"/modelgen.log \
           "$BENCH"/out/sweep.log "$BENCH"/compare.log; do
    [ -f "$f" ] && echo "$f: $(tail -n 2 "$f" | cut -c1-160 | tr '\n' ' ')"
  done
}

case "${1:-status}" in
  start)
    mkdir -p "$BENCH"; : > "$BENCH/phase"
    # Its own copy of the tree: a later call's changed tree must not reach a running sweep.
    mkdir -p "$BENCH/src" && tar cf - --exclude=./.git --exclude=./.venv --exclude=./builds . \
      | tar xf - -C "$BENCH/src"
    (cd "$BENCH/src" && setsid nohup bash benchmarks/partial_offload.sh run > "$BENCH/log" 2>&1 < /dev/null &)
    echo "started; poll with: bash $0 wait 540" ;;
  run) run ;;
  wait)
    end=$((SECONDS + ${2:-540}))
    while [ $SECONDS -lt $end ] && ! grep -q "done\|FAILED" "$BENCH/phase" 2>/dev/null; do sleep 5; done
    status
    if [ -n "${OUT:-}" ] && [ -d "$BENCH/out" ]; then
      tar czf "$OUT/snapshot.tar.gz" -C "$BENCH" out phase 2>/dev/null
    fi ;;
  status) status ;;
  collect)
    dest=${OUT:-$BENCH/collected}; mkdir -p "$dest"
    cp "$BENCH"/install.log "$BENCH"/installed-bench.log "$BENCH"/modelgen.log "$BENCH"/compare.log \
      "$BENCH"/hold.log "$BENCH/out/" 2>/dev/null
    [ -f "$BENCH/results/optuna.db" ] && cp "$BENCH/results/optuna.db" "$BENCH/out/"
    tar czf "$dest/partial-offload.tar.gz" -C "$BENCH" out phase
    cat "$BENCH/out/doctor.txt" 2>/dev/null | grep "memory plan" | head -3
    tail -n 15 "$BENCH/out/sweep.log" 2>/dev/null
    cat "$BENCH/out/compare.md" 2>/dev/null ;;
esac
