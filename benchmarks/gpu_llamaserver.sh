#!/usr/bin/env bash
# Issue 30, second deploy target, on a bare CUDA machine (H100/H200), from the repository root:
#   bash benchmarks/gpu_llamaserver.sh start      # the whole run in the background (setsid)
#   bash benchmarks/gpu_llamaserver.sh wait 540   # up to N seconds; prints the phase log
#   bash benchmarks/gpu_llamaserver.sh collect    # summary table + details into $OUT
# One CUDA variant ($VARIANT, arch $CUDA_ARCH) built with llama-server in the same build
# (`tuner build --server-only`: the library + llama-server, no llama-bench), random-weight
# models of two shapes ($MODELS, shape:quant), then per model the default
# `tuner sweep --model M --prompt-tokens 2048 --gen-tokens 128` ($SWEEP_ARGS: --no-build, so it
# does not compile the other variants), which serves the winner through llama_cpp.server and
# llama-server and writes both deployments; then `tuner verify` of each service from another
# directory. Files: $GPU_FILES holds the wheels/ and the llama-cpp-python source archive
# (/work/shared/gpu on the lead's machine: carry it as shared/gpu or .carry/).
set -uo pipefail
BENCH=${BENCH:-/tmp/llsrv}
GPU_FILES=${GPU_FILES:-$( [ -d shared/gpu ] && echo shared/gpu || echo .carry)}
SDIST=${SDIST:-$GPU_FILES/llama-cpp-python-0.3.36-src.tar.gz}
ARCH=${CUDA_ARCH:-90}
VARIANT=${VARIANT:-force-cublas}
MODELS=${MODELS:-llama3.2-3b:q6_k mistral-7b:q4_k_m}
SWEEP_ARGS=${SWEEP_ARGS:---no-build}
JOBS=${JOBS:-$(nproc)}
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH

phase() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$BENCH/phase"; }
path_of() { echo "$BENCH/${1%%:*}-${1##*:}.gguf"; }
name_of() { echo "${1%%:*}"; }

setup() {  # the wheels, then the Python half of llama-cpp-python (the library: tuner build)
  mkdir -p /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
    "$GPU_FILES"/wheels/*.whl "$GPU_FILES"/diskcache-*.whl || return 1
  CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" python3 -m pip install -q --no-deps \
    --no-build-isolation --no-index --target /tmp/site "$SDIST" || return 1
  python3 -c "import httpx, uvicorn, optuna, llama_cpp.server" || return 1
}

run() {
  mkdir -p "$BENCH/out"
  phase setup; setup > "$BENCH/setup.log" 2>&1 || { phase "FAILED setup"; tail -5 "$BENCH/setup.log"; return 1; }
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$BENCH/out/gpu.txt"
  phase "build $VARIANT (arch $ARCH) with llama-server; write the f16 models"
  local s=$SECONDS
  python3 -m tuner build --variant "$VARIANT" --server-only --source "$SDIST" --cuda-arch "$ARCH" \
    -j "$JOBS" > "$BENCH/build.log" 2>&1 &
  local build_pid=$!
  for m in $MODELS; do
    nice python3 -m tuner.models.modelgen --shape "${m%%:*}" --quant f16 --out "$(path_of "$m").f16" \
      >> "$BENCH/modelgen.log" 2>&1 || { phase "FAILED modelgen $m"; return 1; }
  done
  wait "$build_pid" || { phase "FAILED build"; tail -20 "$BENCH/build.log"; return 1; }
  phase "built in $((SECONDS - s)) s"; python3 -m tuner build --list | tee "$BENCH/out/builds.txt"
  cp builds/"$VARIANT"/build.json "$BENCH/out/build.json"
  readelf -d builds/"$VARIANT"/bin/llama-server | grep -i 'path' | tee "$BENCH/out/server-runpath.txt"
  for m in $MODELS; do
    phase "quantize $m"
    LLAMA_CPP_LIB_PATH=$PWD/builds/$VARIANT/lib python3 -c "
from tuner.models.modelgen import quantize; quantize('$(path_of "$m").f16', '$(path_of "$m")', '${m##*:}')" \
      >> "$BENCH/modelgen.log" 2>&1 || { phase "FAILED quantize $m"; return 1; }
    rm -f "$(path_of "$m").f16"
  done
  for m in $MODELS; do
    local n; n=$(name_of "$m"); s=$SECONDS
    phase "sweep $m"
    # shellcheck disable=SC2086
    python3 -m tuner sweep --model "$(path_of "$m")" --prompt-tokens 2048 --gen-tokens 128 \
      --results "$BENCH/results-$n" --out "$BENCH/out/$n/production.yaml" --builds builds \
      $SWEEP_ARGS > "$BENCH/out/sweep-$n.log" 2>&1
    echo "sweep exit $? after $((SECONDS - s)) s" | tee -a "$BENCH/out/sweep-$n.log"
    python3 -m tuner report --results "$BENCH/results-$n" > "$BENCH/out/report-$n.txt" 2>&1
    mkdir -p "$BENCH/elsewhere"
    for target in production.yaml production.llama-server.args; do
      phase "verify $n $target"
      (cd "$BENCH/elsewhere" && python3 -m tuner verify "$BENCH/out/$n/$target" \
        --tolerance 15 > "$BENCH/out/verify-$n-$target.log" 2>&1
       echo "verify exit $?" >> "$BENCH/out/verify-$n-$target.log")
    done
  done
  phase done
}

collect() {  # the table last; everything under $OUT
  local dest=${OUT:-$BENCH/collected}; mkdir -p "$dest"
  cp -r "$BENCH/out/." "$dest/" 2>/dev/null
  cp "$BENCH"/*.log "$BENCH/phase" "$BENCH/log" "$dest/" 2>/dev/null
  for m in $MODELS; do
    local n; n=$(name_of "$m")
    echo "== $m"
    grep -E "^(llama_cpp.server|llama-server): |recommended:|llama-server deployment|sweep exit" \
      "$BENCH/out/sweep-$n.log" 2>/dev/null | sed 's/^[0-9:. ]*//'
    for target in production.yaml production.llama-server.args; do
      echo "verify $target: $(grep -E '^(verified|error):|verify exit' \
        "$BENCH/out/verify-$n-$target.log" 2>/dev/null | tr '\n' ' ')"
      grep -E "^(generation|time to first token|raw vs served):" \
        "$BENCH/out/verify-$n-$target.log" 2>/dev/null | sed 's/^/  /'
    done
  done | tee "$dest/summary.txt"
}

case "${1:-}" in
  start)  # in a copy of the tree: a later call's copy must not reach a running sweep
    mkdir -p "$BENCH/src"; : > "$BENCH/phase"
    tar cf - --exclude=./.git --exclude=./.venv --exclude=./builds . | tar xf - -C "$BENCH/src"
    (cd "$BENCH/src" && setsid nohup bash benchmarks/gpu_llamaserver.sh run > "$BENCH/log" 2>&1 < /dev/null &)
    echo "started; poll with: bash $0 wait 540" ;;
  run) run ;;
  wait) for _ in $(seq "${2:-540}"); do grep -qE "done|FAILED" "$BENCH/phase" 2>/dev/null && break; sleep 1; done
        cat "$BENCH/phase" ;;
  collect) collect ;;
  *) echo "usage: $0 start|run|wait [N]|collect" >&2; exit 2 ;;
esac
