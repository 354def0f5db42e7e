#!/usr/bin/env bash
# Issues 30 and 31 in one H200/H100 lease, from the repository root (the lead's checkout carries
# shared/gpu as .carry/: wheels/, diskcache-*.whl, the llama-cpp-python source archive):
#   bash benchmarks/gpu_session.sh start      # everything in the background (setsid)
#   bash benchmarks/gpu_session.sh wait 560   # wait up to N seconds; phases, snapshot into $OUT
#   bash benchmarks/gpu_session.sh collect    # the short table last, details into $OUT
# 1. Setup: the wheels; the CUDA llama-cpp-python from the source archive (the `installed`
#    build, default kernels); beside it a CPU-built llama-server of the same source (`tuner
#    build --variant cpu --server-only`: it drives the CUDA library through LD_LIBRARY_PATH),
#    the models (shapes no earlier run used; quantized by the CPU build's library while the CUDA
#    one compiles),
#    then a llama-bench loading the installed libraries (benchmarks/installed_bench.py).
# 2. Issue 30: with $KNOB_MODEL set, benchmarks/llamaserver_knobs.py first (llama-server's
#    per-token cost, one server setting changed at a time); then per model in $SERVED_MODELS: `tuner sweep --model M --prompt-tokens 2048 --gen-tokens 128
#    --no-build $SERVED_ARGS` (the served phase serves the winner through llama_cpp.server and llama-server
#    and measures the per-token breakdown), then `tuner verify` of both services from another
#    directory; with EVENT_LOOP=1, benchmarks/event_loop.py on the written config (uvloop,
#    carried as a Python 3.12 wheel in wheels/, against asyncio's loop).
# 3. Issue 31 (by default only when SERVED_MODELS is empty; FIT=1 / FIT=0 say otherwise): a
#    process holds all but $LEAVE_GIB GiB of the GPU; `tuner doctor --model`; a default sweep
#    of $FIT_MODEL ($FIT_ARGS: more sweep options, default --offload-budget 600 to leave the
#    compare room in the lease; empty: the product's 900 s budget); benchmarks/partial_offload.py
#    compare (the plan's boundary against llama-bench's; llama-bench at that boundary, at the
#    winner's layers and at the winner's own setting; llama.cpp's fit), then `tuner verify` of
#    both written services from another directory, still under the hold. With 8 GiB left a 7-8B Q4_K_M fits whole: the 8 GiB case is
#    FIT_MODEL=qwen2.5-14b:q4_k_m LEAVE_GIB=8 (its f16 is 27.5 GiB of disk while it is
#    quantized: the setup checks the disk every model needs first). A mixture of experts:
#    FIT_MODEL=olmoe-7b:q4_k_m LEAVE_GIB=3 (tuner/models/archgen.py MOE_SHAPES; the sweep
#    searches experts on the host, n_cpu_moe, beside whole layers).
#    MOE_CHECK=1 (first, after the setup): a small qwen3moe file swept at n_cpu_moe 2
#    (benchmarks/spaces/moe-host-one.yaml) and both services verified: the experts-on-host path
#    on CUDA in a minute or two (MOE_CHECK=1 FIT=0 SERVED_MODELS= ARCHS=0: that alone).
#    COMPARE=0: no compare and no llama-bench build (a lease too short for them: the sweep's
#    own proofs, calibration and boundary lines, and the verifies, alone).
# 4. Unless ARCHS=0, last: benchmarks/arch_placement.py (the memory plan per
#    device against real CUDA loads of gemma3, deepseek2-MLA, qwen35, qwen3moe, mamba and rwkv6
#    files), then a one-setting sweep of each (benchmarks/spaces/arch-one.yaml).
#    Issue 30 alone: bash benchmarks/gpu_session.sh start (EVENT_LOOP=1 KNOB_MODEL=... add more)
#    Issue 31 alone: SERVED_MODELS= bash benchmarks/gpu_session.sh start
set -uo pipefail
BENCH=${BENCH:-/tmp/gs}
FILES=${FILES:-.carry}
SDIST=${SDIST:-$FILES/llama-cpp-python-0.3.36-src.tar.gz}
ARCH=${CUDA_ARCH:-90}
# Shapes no earlier run used (issue 30 asks for new ones): Granite 3.1 8B's and Qwen3 1.7B's.
SERVED_MODELS=${SERVED_MODELS-granite3-8b:q4_k_m qwen3-1.7b:q6_k}
SERVED_ARGS=${SERVED_ARGS-}  # e.g. --space benchmarks/spaces/served-one.yaml
KNOB_MODEL=${KNOB_MODEL-}  # e.g. qwen3-8b:q4_k_m: benchmarks/llamaserver_knobs.py first
KNOB_ARGS=${KNOB_ARGS---n-batch 2048 --n-ubatch 1024 --flash-attn --threads 4}
FIT_MODEL=${FIT_MODEL:-qwen3-8b:q4_k_m}
LEAVE_GIB=${LEAVE_GIB:-4}
# A lease is 30 minutes: the machine's start 2-5, setup about 8, this sweep, the compare about 5,
# the two verifies 2.
FIT_ARGS=${FIT_ARGS---offload-budget 600}
# more options of benchmarks/partial_offload.py compare, e.g. --load-modes none (a short lease)
COMPARE_ARGS=${COMPARE_ARGS-}
# The fit phase runs by default only in a lease of its own (no served models): both need more
# than one lease's 30 minutes, and more disk than the machine's 64 GiB at once.
if [ -z "${FIT:-}" ]; then if [ -z "$SERVED_MODELS" ]; then FIT=1; else FIT=0; fi; fi
# collect (a later call, without the start's environment) reads what the session was started with
SESSION_VARS="SERVED_MODELS KNOB_MODEL FIT_MODEL LEAVE_GIB FIT_ARGS COMPARE_ARGS FIT"
# shellcheck disable=SC1091
[ "${1:-}" = collect ] && [ -f "$BENCH/session.env" ] && . "$BENCH/session.env"
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH

phase() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$BENCH/phase"; }
# what runs on the CPU now: the time, the load, the top $1 processes (run 34: every generation
# measured after the sweep, both verifies among them, ran 20-25% slower than the sweep's own)
cpu_now() { date -u +%T; uptime; ps -eo pid,pcpu,rss,etimes,args --sort=-pcpu | head -"$1" | cut -c1-160; }
path_of() { echo "$BENCH/${1%%:*}-${1##*:}.gguf"; }
name_of() { echo "${1%%:*}"; }

models() {  # every model a phase that runs needs, once
  local fit=$FIT_MODEL; [ "$FIT" = 0 ] && fit=
  echo "$SERVED_MODELS $KNOB_MODEL $fit" | tr ' ' '\n' | sort -u | grep .
}

knobs() {  # issue 30: llama-server's per-token cost, one setting changed at a time
  local m=$KNOB_MODEL
  phase "knobs $m"
  # shellcheck disable=SC2086
  python3 benchmarks/llamaserver_knobs.py --model "$(path_of "$m")" --builds builds $KNOB_ARGS \
    --out "$BENCH/out/knobs" > "$BENCH/out/knobs.log" 2>&1
  echo "knobs exit $?" >> "$BENCH/out/knobs.log"
}

quantize_all() {  # every model's f16 file to its quantization, with the CPU build's library
  local m
  for m in $(models); do
    [ -f "$(path_of "$m")" ] && continue
    # Its own copy of the Python half: the CUDA install replaces /tmp/site/llama_cpp meanwhile.
    LLAMA_CPP_LIB_PATH=$PWD/builds/cpu/lib PYTHONPATH=/tmp/site-py:$PYTHONPATH python3 -c "from tuner.models.modelgen import quantize; quantize('$(path_of "$m").f16', '$(path_of "$m")', '${m##*:}')" \
      >> "$BENCH/modelgen.log" 2>&1 || return 1
    rm -f "$(path_of "$m").f16"
  done
}

check_disk() {  # every model's f16 file and quantized copy exist at once while they are made
  local need=0 n have m
  for m in $(models); do
    n=$(python3 benchmarks/partial_offload.py disk --shape "${m%%:*}") || return 1
    need=$((need + n))
  done
  have=$(df --output=avail -BG "$BENCH" | tail -1 | tr -dc 0-9)
  echo "disk: the models need $need GiB while they are made, $have GiB free in $BENCH" \
    | tee -a "$BENCH/out/gpu.txt"
  [ "$have" -ge "$need" ]
}

setup() {
  mkdir -p /tmp/site "$BENCH/out"
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
    "$FILES"/wheels/*.whl "$FILES"/diskcache-*.whl || return 1
  # The Python half first (tuner build reads the installed version), then the CUDA library.
  CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" python3 -m pip install -q --no-deps \
    --no-build-isolation --no-index --target /tmp/site "$SDIST" || return 1
  mkdir -p /tmp/site-py && cp -r /tmp/site/llama_cpp /tmp/site-py/
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
    > "$BENCH/out/gpu.txt"; nproc >> "$BENCH/out/gpu.txt"
  # cores, threads per core, model: what the thread counts searched mean on this machine
  lscpu | grep -E "^(Model name|Thread|Core|Socket|CPU\(s\)|NUMA node\(s\)|Flags)" | cut -c1-200 \
    > "$BENCH/out/lscpu.txt" 2>&1
  check_disk || return 1
  local s=$SECONDS pids=()
  (CMAKE_BUILD_PARALLEL_LEVEL=12 CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$ARCH" \
    CFLAGS="$(python3 tuner/builds/cpuflags.py)" CXXFLAGS="$(python3 tuner/builds/cpuflags.py)" \
    python3 -m pip install -q --upgrade --no-deps --no-build-isolation --no-index \
    --target /tmp/site "$SDIST" > "$BENCH/install.log" 2>&1
   echo "exit $? after $((SECONDS - s)) s" >> "$BENCH/install.log") &
  local install_pid=$!
  # llama-bench's CPU parts compile beside the CUDA library (run 34: 134 s of the setup came
  # after the CUDA install, llama-bench's compile among them); checked against it after
  if [ "$FIT" != 0 ] && [ "${COMPARE:-1}" != 0 ]; then
    python3 benchmarks/installed_bench.py --source "$SDIST" --out "$BENCH/bench" -j 4 \
      --compile-only > "$BENCH/installed-bench.log" 2>&1 & pids+=($!)
  fi
  python3 -m tuner build --variant cpu --server-only --source "$SDIST" --builds builds -j 4 \
    > "$BENCH/server-build.log" 2>&1 &
  local server_pid=$!
  for m in $(models); do
    # a mixture of experts' shape (tuner/models/archgen.py MOE_SHAPES) or a llama's
    if python3 -c "import sys; from tuner.models.archgen import MOE_SHAPES; sys.exit('${m%%:*}' not in MOE_SHAPES)"; then
      [ -f "$(path_of "$m").f16" ] || python3 -m tuner.models.archgen --shape "${m%%:*}" \
        --out "$(path_of "$m").f16" >> "$BENCH/modelgen.log" 2>&1
    else
      [ -f "$(path_of "$m").f16" ] || python3 -m tuner.models.modelgen --shape "${m%%:*}" \
        --quant f16 --out "$(path_of "$m").f16" >> "$BENCH/modelgen.log" 2>&1
    fi
  done
  wait "$server_pid" || return 1
  # Quantized by the CPU build's library while the CUDA one compiles (quantizing is CPU code,
  # the same in both): run 30 spent 3 minutes quantizing after the install.
  quantize_all & local quant_pid=$!
  wait "$install_pid"; grep -q "^exit 0" "$BENCH/install.log" || return 1
  python3 -c "import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_gpu_offload())" || return 1
  # It checks that its llama-bench resolves the installed CUDA libraries: after the install.
  # Only the fit phase's compare uses it.
  if [ "$FIT" != 0 ] && [ "${COMPARE:-1}" != 0 ]; then
    wait "${pids[@]}" || return 1
    python3 benchmarks/installed_bench.py --source "$SDIST" --out "$BENCH/bench" --check-only \
      >> "$BENCH/installed-bench.log" 2>&1 || return 1
  fi
  wait "$quant_pid" || return 1
  phase "setup done in $((SECONDS - s)) s"
  python3 -m tuner build --list --builds builds > "$BENCH/out/builds.txt" 2>&1
}

verify_written() {  # both services written into folder $1, started from another directory:
  # `tuner verify` of each (the rest of the arguments passed on), logged as $BENCH/out/$2-<file>.log
  local dir=$1 tag=$2 target; shift 2
  mkdir -p "$BENCH/elsewhere"
  for target in production.yaml production.llama-server.args; do
    [ -f "$dir/$target" ] || continue
    phase "$tag $target"
    cpu_now 12 > "$BENCH/out/$tag-$target.cpu.txt" 2>&1  # what else runs on the CPU first
    (cd "$BENCH/elsewhere" && python3 -m tuner verify "$dir/$target" "$@" \
      > "$BENCH/out/$tag-$target.log" 2>&1
     echo "verify exit $?" >> "$BENCH/out/$tag-$target.log")
  done
}

served() {  # issue 30: one default sweep per model, both services verified from elsewhere
  for m in $SERVED_MODELS; do
    local n s=$SECONDS; n=$(name_of "$m")
    phase "sweep $m"
    # shellcheck disable=SC2086
    python3 -m tuner sweep --model "$(path_of "$m")" --prompt-tokens 2048 --gen-tokens 128 \
      --no-build --results "$BENCH/results-$n" --out "$BENCH/out/$n/production.yaml" \
      --builds builds $SERVED_ARGS > "$BENCH/out/sweep-$n.log" 2>&1
    echo "sweep exit $? after $((SECONDS - s)) s" | tee -a "$BENCH/out/sweep-$n.log"
    python3 -m tuner report --results "$BENCH/results-$n" > "$BENCH/out/report-$n.txt" 2>&1
    python3 -m tuner report --results "$BENCH/results-$n" --format json \
      -o "$BENCH/out/report-$n.json" > /dev/null 2>&1
    if [ "${EVENT_LOOP:-0}" = 1 ] && [ -f "$BENCH/out/$n/production.yaml" ]; then
      phase "event loop $n"  # uvloop (carried in wheels/) against asyncio's loop
      python3 benchmarks/event_loop.py --config "$BENCH/out/$n/production.yaml" --rounds 2 \
        --requests 5 --out "$BENCH/out/event-loop-$n.json" > "$BENCH/out/event-loop-$n.log" 2>&1
    fi
    verify_written "$BENCH/out/$n" "verify-$n"
  done
}

fit() {  # issue 31: the GPU made small by a process holding its memory
  local m=$FIT_MODEL s
  phase "hold all but $LEAVE_GIB GiB"
  python3 benchmarks/partial_offload.py hold --leave-gib "$LEAVE_GIB" --ready "$BENCH/out/held.json" \
    > "$BENCH/hold.log" 2>&1 &
  local hold_pid=$!
  # what runs on the CPU and the GPU's clocks through the whole phase, every 15 s
  (while sleep 15; do cpu_now 8; done) > "$BENCH/out/fit-cpu-timeline.txt" 2>&1 &
  local cpu_pid=$!
  nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,temperature.gpu,power.draw,utilization.gpu,memory.used,clocks_event_reasons.active \
    --format=csv -l 15 > "$BENCH/out/fit-gpu-timeline.csv" 2>&1 &
  local smi_pid=$!
  for _ in $(seq 120); do [ -s "$BENCH/out/held.json" ] && break; sleep 1; done
  [ -s "$BENCH/out/held.json" ] || { phase "FAILED hold"; kill "$hold_pid" "$cpu_pid" "$smi_pid"; return 1; }
  nvidia-smi --query-gpu=memory.total,memory.used,memory.free --format=csv >> "$BENCH/out/gpu.txt"
  python3 -m tuner doctor --model "$(path_of "$m")" --n-ctx 2176 > "$BENCH/out/fit-doctor.txt" 2>&1
  phase "fit sweep $m ($FIT_ARGS)"; s=$SECONDS
  # shellcheck disable=SC2086
  python3 -m tuner sweep --model "$(path_of "$m")" --prompt-tokens 2048 --gen-tokens 128 \
    --no-build --results "$BENCH/results-fit" --out "$BENCH/out/fit/production.yaml" \
    --builds builds $FIT_ARGS > "$BENCH/out/fit-sweep.log" 2>&1
  echo "sweep exit $? after $((SECONDS - s)) s" >> "$BENCH/out/fit-sweep.log"
  python3 -m tuner report --results "$BENCH/results-fit" > "$BENCH/out/fit-report.txt" 2>&1
  # the study itself: each trial's record, a crashed worker's last lines among them
  cp "$BENCH/results-fit/optuna.db" "$BENCH/out/fit-study.db" 2>/dev/null
  if [ "${COMPARE:-1}" != 0 ]; then
    phase "fit compare"
    cpu_now 12 > "$BENCH/out/fit-compare.cpu.txt" 2>&1
    # shellcheck disable=SC2086
    python3 benchmarks/partial_offload.py compare --model "$(path_of "$m")" \
      --results "$BENCH/results-fit" --bench "$BENCH/bench" --out "$BENCH/out" \
      --sweep-log "$BENCH/out/fit-sweep.log" $COMPARE_ARGS > "$BENCH/out/fit-compare.md" \
      2> "$BENCH/compare.log"
  fi
  # last, still under the hold: the written services, started from another directory
  verify_written "$BENCH/out/fit" fit-verify --requests 3
  kill "$hold_pid" "$cpu_pid" "$smi_pid" 2>/dev/null
}

moecheck() {  # the experts-on-host path on CUDA in a minute or two: a small qwen3moe file
  # (4 layers), one setting with the first 2 layers' experts on the host
  # (benchmarks/spaces/moe-host-one.yaml), then both written services verified from elsewhere
  local f="$BENCH/moe4.gguf" n=moe
  phase "moe check"
  python3 -c "from pathlib import Path; from tuner.models.archgen import write_qwen3moe; write_qwen3moe(Path('$f'), n_layer=4)" \
    > "$BENCH/out/moe-sweep.log" 2>&1
  python3 -m tuner sweep --model "$f" --space benchmarks/spaces/moe-host-one.yaml \
    --prompt-tokens 512 --gen-tokens 64 --no-build --results "$BENCH/results-$n" \
    --out "$BENCH/out/$n/production.yaml" --builds builds >> "$BENCH/out/moe-sweep.log" 2>&1
  echo "sweep exit $?" >> "$BENCH/out/moe-sweep.log"
  verify_written "$BENCH/out/$n" moe-verify --requests 3
}

archs() {  # small files of other architectures (a few minutes): the memory plan per device,
  # then one-setting sweeps of each (proofs, op report, served phase, config) on CUDA
  phase "arch placement"
  python3 benchmarks/arch_placement.py --out "$BENCH/archs" > "$BENCH/out/archs.md" \
    2> "$BENCH/archs.log" || echo "arch placement exit $?" >> "$BENCH/out/archs.md"
  local f n
  for f in "$BENCH"/archs/*.gguf; do
    n=$(basename "$f" .gguf)
    python3 -m tuner sweep --model "$f" --space benchmarks/spaces/arch-one.yaml \
      --prompt-tokens 512 --gen-tokens 64 --no-build --results "$BENCH/results-arch-$n" \
      --out "$BENCH/out/arch-$n/production.yaml" --builds builds > "$BENCH/out/arch-sweep-$n.log" 2>&1
    echo "| $n | sweep exit $? | $(grep -E '^(verified|no production config)' "$BENCH/out/arch-sweep-$n.log" \
      | head -1 | cut -c1-150) |" >> "$BENCH/out/archs.md"
  done
}

run() {
  mkdir -p "$BENCH/out"
  phase setup
  setup || { phase "FAILED setup"; tail -5 "$BENCH"/*.log; return 1; }
  [ "${MOE_CHECK:-0}" = 0 ] || moecheck
  [ -z "$KNOB_MODEL" ] || knobs
  served
  [ "$FIT" = 0 ] || fit
  # last: the issues' phases keep their figures if the lease ends during this one
  [ "${ARCHS:-1}" = 0 ] || archs
  phase done
}

snapshot() {
  [ -n "${OUT:-}" ] || return 0
  cp "$BENCH"/*.log "$BENCH/out/" 2>/dev/null
  tar czf "$OUT/gs-out.tar.gz" -C "$BENCH" out phase 2>/dev/null
}

summary() {
  [ -f "$BENCH/out/moe-sweep.log" ] && { echo "== moe check"; grep -E "sweep exit|verified|not verified|experts|error" \
    "$BENCH/out/moe-sweep.log" | cut -c1-260 | tail -12; cat "$BENCH/out"/moe-verify-*.log 2>/dev/null | grep -E "^(verified|error)|verify exit|experts"; }
  [ -f "$BENCH/out/archs.md" ] && { echo "== arch placement (plan per device)"; cat "$BENCH/out/archs.md"; }
  [ -f "$BENCH/out/knobs.log" ] && { echo "== knobs $KNOB_MODEL"; tail -14 "$BENCH/out/knobs.log"; }
  for m in $SERVED_MODELS; do
    local n; n=$(name_of "$m")
    echo "== $m"
    grep -E "sweep exit|winner #|recommend|llama-server|per token|breakdown" "$BENCH/out/sweep-$n.log" 2>/dev/null \
      | cut -c1-260 | tail -10
    [ -f "$BENCH/out/event-loop-$n.log" ] && tail -6 "$BENCH/out/event-loop-$n.log"
    for f in "$BENCH/out/verify-$n"-*.log; do
      [ -f "$f" ] && echo "$(basename "$f"): $(grep -E '^(verified|error):|verify exit' "$f" | tr '\n' ' ')"
    done
  done
  [ -f "$BENCH/out/fit-sweep.log" ] && { echo "== fit $FIT_MODEL"; tail -6 "$BENCH/out/fit-sweep.log";
    cat "$BENCH/out/fit-compare.md" 2>/dev/null | tail -20
    for f in "$BENCH/out"/fit-verify-*.log; do
      [ -f "$f" ] && echo "$(basename "$f"): $(grep -E '^(verified|error):|verify exit' "$f" | tr '\n' ' ')"
    done; }
}

case "${1:-}" in
  start)
    mkdir -p "$BENCH"; : > "$BENCH/phase"
    for v in $SESSION_VARS; do printf '%s=%q\n' "$v" "${!v}"; done > "$BENCH/session.env"
    # Its own copy of the tree: a later call's tree must not reach a running sweep.
    mkdir -p "$BENCH/src" && tar cf - --exclude=./.git --exclude=./.venv . | tar xf - -C "$BENCH/src"
    (cd "$BENCH/src" && setsid nohup bash benchmarks/gpu_session.sh run > "$BENCH/log" 2>&1 < /dev/null &)
    echo started ;;
  run) run ;;
  wait)
    end=$((SECONDS + ${2:-560}))
    while [ $SECONDS -lt $end ] && ! grep -qE "^[0-9:]+ (done|FAILED)" "$BENCH/phase" 2>/dev/null; do sleep 5; done
    cat "$BENCH/phase"; tail -3 "$BENCH/log" 2>/dev/null; snapshot ;;
  collect) snapshot; summary | tee "${OUT:-$BENCH}/summary.txt" ;;
  fit-only) fit; phase done ;;
  until-setup)  # a lease shorter than planned: wait up to N s for the setup, then stop the
    # session's run and start the fit phase alone with this call's FIT_ARGS (e.g. a smaller
    # --offload-budget), from the same tree and builds
    end=$((SECONDS + ${2:-560}))
    while [ $SECONDS -lt $end ] && ! grep -qE "setup done|FAILED" "$BENCH/phase" 2>/dev/null; do sleep 2; done
    if grep -q "setup done" "$BENCH/phase"; then
      pid=$(pgrep -f "gpu_session.sh run" | head -1)
      [ -n "$pid" ] && kill -- -"$pid" 2>/dev/null; sleep 3; pkill -f "partial_offload.py hold"
      rm -f "$BENCH/out/held.json"; cp "$0" "$BENCH/src/benchmarks/gpu_session.sh"
      phase "restarting the fit phase alone ($FIT_ARGS)"
      (cd "$BENCH/src" && setsid nohup bash benchmarks/gpu_session.sh fit-only > "$BENCH/log" 2>&1 < /dev/null &)
    fi
    cat "$BENCH/phase"; snapshot ;;
  *) echo "usage: $0 start|wait [N]|collect|until-setup [N]" >&2; exit 2 ;;
esac
