#!/usr/bin/env bash
# The GPU benchmark, for a CUDA machine (H100/H200), run from the repository root:
#   bash benchmarks/gpu_bench.sh start     # the whole run in the background (setsid)
#   bash benchmarks/gpu_bench.sh wait N    # wait up to N seconds for it, then print status
#   bash benchmarks/gpu_bench.sh collect   # results into $OUT as one bench.tar.gz + summary.md
# It builds the kernel variants ($VARIANTS) with `tuner build` from the llama-cpp-python sdist in
# .carry/, writes random-weight models of real shapes ($MODELS: shape:quant ...), runs
# `tuner sweep` with the DEFAULT space (every build found x n_batch x n_ubatch x flash attention x
# KV type) at 2048 + 128 tokens, then benchmarks/fidelity_space.py: llama-bench of the same
# builds over every setting the sweep measured, in the same machine session.
# LB_ARGS="--poll 0": more llama-bench options for the fidelity pass.
# POLL_PROBE="2048/1024/0 ..." (with NO_SWEEP=1): llama-bench's pp2048 at --poll 50 and 0.
# FRESH=1: issue 11's fresh machine: the CUDA llama-cpp-python installed from the sdist (not
# timed), then `tuner sweep --model M` with defaults, timed, building its own kernel variants.
# SPIN_PROBE=1 (with FRESH=1): before the sweep, docs/benchmarks/probes/spin_probe.py on each model.
# PHASES=1 (with FRESH=1): before the sweep, docs/benchmarks/probes/worker_phases.py and
# docs/benchmarks/probes/fork_probe.py on each model;
# SHARED_PROBE=1 (with FRESH=1): before the sweep, docs/benchmarks/probes/shared_rounds.py on each model;
# NO_SWEEP=1 with FRESH=1 stops there.
# GRID_COMPARE=1: per model, after the default sweep and its llama-bench pass, the exhaustive
# grid sweep and benchmarks/search_compare.py (issue 11's 98% / 25% goal).
# Needs: nvcc, cmake, ninja, python3 with numpy/pandas/rich/pyyaml/scikit-build-core and
# nvidia-ml-py; missing Python packages as wheels in .whl/ (see docs/benchmarks.md).
# MULTI_GPU=1 (with GPUS=0,1 and MODELS="throughput-model split-model"): instead of the sweeps,
# trials per hour of `tuner sweep --gpus 0` against `--gpus $GPUS` on the first model, then the
# second model swept over split modes across every GPU (benchmarks/multigpu_rate.py).
set -uo pipefail
GPUS=${GPUS:-0,1}
BENCH=${BENCH:-/tmp/bench}
SDIST=${SDIST:-.carry/llama-cpp-python-0.3.36-src.tar.gz}
ARCH=${CUDA_ARCH:-90}
VARIANTS=${VARIANTS:-default force-cublas}
MODELS=${MODELS:-qwen2.5-1.5b:q8_0}
JOBS=${JOBS:-8}
export PYTHONUNBUFFERED=1

phase() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$BENCH/phase"; }
path_of() { echo "$BENCH/${1%%:*}-shape-${1##*:}.gguf"; }

setup() {
  mkdir -p /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || return 1
  # The Python half of llama-cpp-python only: the libraries come from `tuner build`.
  CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" python3 -m pip install -q --no-deps \
    --no-build-isolation --no-index --target /tmp/site "$SDIST" || return 1
}

prepare() {  # setup, the builds and the quantized models
  mkdir -p "$BENCH/out"
  if [ -z "${SKIP_BUILD:-}" ]; then  # SKIP_BUILD=1: setup, builds and f16 models are there
  phase setup; setup || { phase FAILED setup; return 1; }
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
    | tee "$BENCH/out/gpu.txt"
  lscpu >> "$BENCH/out/gpu.txt"
  phase "build $VARIANTS + write models"
  for v in $VARIANTS; do
    python3 -m tuner build --variant "$v" --source "$SDIST" --cuda-arch "$ARCH" -j "$JOBS" \
      > "$BENCH/build-$v.log" 2>&1 &
  done
  for m in $MODELS; do
    python3 -m tuner.models.modelgen --shape "${m%%:*}" --quant f16 --out "$(path_of "$m").f16" \
      >> "$BENCH/modelgen.log" 2>&1
  done
  wait
  for v in $VARIANTS; do
    [ -f "builds/$v/build.json" ] || { phase "FAILED build $v"; tail -20 "$BENCH/build-$v.log"; return 1; }
  done
  fi
  python3 -m tuner build --list | tee "$BENCH/out/builds.txt"
  set -- $VARIANTS
  phase quantize
  for m in $MODELS; do
    [ -f "$(path_of "$m")" ] && continue
    LLAMA_CPP_LIB_PATH=$PWD/builds/$1/lib python3 -c "
import time; from tuner.models.modelgen import quantize
t = time.time(); quantize('$(path_of "$m").f16', '$(path_of "$m")', '${m##*:}'); print('$m quantized', round(time.time() - t), 's')
" >> "$BENCH/modelgen.log" 2>&1 || { phase "FAILED quantize $m"; return 1; }
    rm -f "$(path_of "$m").f16"
  done
}

sweep() {  # model, study name, extra sweep arguments: one `tuner sweep` at 2048 + 128 tokens
  local m=$1 name=$2 s=$SECONDS; shift 2
  python3 -m tuner sweep --model "$(path_of "$m")" --prompt-tokens 2048 --gen-tokens 128 \
    --results "$BENCH/results-$name" --out "$BENCH/out/$name/production.yaml" --builds builds "$@" \
    > "$BENCH/sweep-$name.log" 2>&1
  echo "sweep exit $? after $((SECONDS - s)) s" >> "$BENCH/sweep-$name.log"
}

fresh() {  # issue 11: a CUDA machine with only the CUDA llama-cpp-python installed, then one
  # plain `tuner sweep --model M` timed from its start, its own kernel builds included.
  mkdir -p "$BENCH/out"
  phase "setup: wheels + the CUDA llama-cpp-python from the sdist, models (not timed)"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { phase "FAILED setup"; return 1; }
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
    | tee "$BENCH/out/gpu.txt"
  for m in $MODELS; do
    python3 -m tuner.models.modelgen --shape "${m%%:*}" --quant f16 --out "$(path_of "$m").f16" \
      >> "$BENCH/modelgen.log" 2>&1 &
  done
  local s=$SECONDS
  CMAKE_BUILD_PARALLEL_LEVEL=$JOBS CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$ARCH" \
    CFLAGS="$(python3 tuner/builds/cpuflags.py)" CXXFLAGS="$(python3 tuner/builds/cpuflags.py)" \
    python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/site \
    "$SDIST" > "$BENCH/install.log" 2>&1 || { phase "FAILED install"; tail -20 "$BENCH/install.log"; return 1; }
  echo "CUDA llama-cpp-python installed in $((SECONDS - s)) s" | tee -a "$BENCH/install.log"
  wait
  # A llama-bench that loads the installed package's own libraries (only its CPU parts compile),
  # so the fidelity pass compares the installed build's settings too; built before the timed
  # sweep, outside the folder the sweep builds in.
  [ -n "${NO_FIDELITY:-}" ] || python3 benchmarks/installed_bench.py --source "$SDIST" \
    --out "$BENCH/installed-bench" -j "$JOBS" > "$BENCH/installed-bench.log" 2>&1 &
  for m in $MODELS; do  # quantized with the installed library
    python3 -c "from tuner.models.modelgen import quantize; quantize('$(path_of "$m").f16', '$(path_of "$m")', '${m##*:}')" \
      >> "$BENCH/modelgen.log" 2>&1 || { phase "FAILED quantize $m"; return 1; }
    rm -f "$(path_of "$m").f16"
  done
  wait; cp "$BENCH/installed-bench.log" "$BENCH/out/" 2>/dev/null
  if [ -n "${SPIN_PROBE:-}" ]; then  # CPU burnt per second of generation, threads spinning or asleep
    for m in $MODELS; do
      phase "spin probe $m"
      python3 docs/benchmarks/probes/spin_probe.py --model "$(path_of "$m")" --out "$BENCH/out/spin-${m/:/-}.json" \
        > "$BENCH/out/spin-${m/:/-}.txt" 2>&1
    done
  fi
  if [ -n "${PHASES:-}" ]; then  # where a fresh worker's seconds go (docs/benchmarks/probes/worker_phases.py)
    for m in $MODELS; do
      phase "worker phases $m"
      python3 docs/benchmarks/probes/worker_phases.py --model "$(path_of "$m")" \
        --out "$BENCH/out/phases-${m/:/-}.json" > "$BENCH/out/phases-${m/:/-}.md" 2>&1
      python3 docs/benchmarks/probes/fork_probe.py --model "$(path_of "$m")" \
        --out "$BENCH/out/fork-${m/:/-}.json" > "$BENCH/out/phases-fork-${m/:/-}.md" \
        2> "$BENCH/fork-${m/:/-}.log"
    done
  fi
  if [ -n "${SHARED_PROBE:-}" ]; then  # finalists' shared rounds against one worker per config
    for m in $MODELS; do
      phase "shared rounds $m"
      python3 docs/benchmarks/probes/shared_rounds.py --model "$(path_of "$m")" \
        --out "$BENCH/out/shared-${m/:/-}.json" > "$BENCH/out/shared-${m/:/-}.md" 2>&1
    done
  fi
  [ -n "${NO_SWEEP:-}" ] && return 0
  # The machine is offline: the source `tuner sweep` would download is put where it looks first.
  local v; v=$(python3 -c "import llama_cpp; print(llama_cpp.__version__)")
  mkdir -p "$BENCH/fresh-builds/.sdist" && cp "$SDIST" "$BENCH/fresh-builds/.sdist/llama_cpp_python-$v.tar.gz"
  for m in $MODELS; do
    name=fresh-${m/:/-}
    phase "fresh sweep $m (timed, builds included)"
    s=$SECONDS
    local timer=(); [ -x /usr/bin/time ] && timer=(/usr/bin/time -v)
    "${timer[@]}" python3 -m tuner sweep --model "$(path_of "$m")" --prompt-tokens 2048 \
      --gen-tokens 128 --results "$BENCH/results-$name" --out "$BENCH/out/$name/production.yaml" \
      --builds "$BENCH/fresh-builds" ${SWEEP_ARGS:-} > "$BENCH/sweep-$name.log" 2>&1
    echo "sweep exit $? after $((SECONDS - s)) s" >> "$BENCH/sweep-$name.log"
    cp -r "$BENCH/fresh-builds/force-cublas/build.json" "$BENCH/out/$name/" 2>/dev/null
    [ -n "${NO_FIDELITY:-}" ] && continue
    # llama-bench of the installed package's libraries and of the builds the sweep made (it
    # builds libraries only): the one compiled above, each loading its own libraries.
    phase "llama-bench over the space $m"
    local own=() b
    if [ -x "$BENCH/installed-bench/bin/llama-bench" ]; then
      own=(--bench "installed=$BENCH/installed-bench")
      for b in "$BENCH"/fresh-builds/*/lib; do
        [ -d "$b" ] || continue  # none made (--no-build)
        b=$(basename "$(dirname "$b")")
        [ -x "$BENCH/fresh-builds/$b/bin/llama-bench" ] && continue
        python3 benchmarks/installed_bench.py --from "$BENCH/installed-bench" \
          --lib "$BENCH/fresh-builds/$b/lib" --out "$BENCH/bench-$b" >> "$BENCH/installed-bench.log" 2>&1 \
          && own+=(--bench "$b=$BENCH/bench-$b")
      done
    fi
    python3 benchmarks/fidelity_space.py --model "$(path_of "$m")" --results "$BENCH/results-$name" \
      --builds "$BENCH/fresh-builds" "${own[@]}" --out "$BENCH/out/$name" --lb-args "${LB_ARGS:-}" \
      > "$BENCH/fidelity-$name.log" 2>&1
    echo "fidelity exit $?" >> "$BENCH/fidelity-$name.log"
  done
}

run() {
  export PYTHONPATH=/tmp/site:$PWD
  if [ -n "${FRESH:-}" ]; then fresh; phase done; return 0; fi
  prepare || return 1
  if [ -n "${MULTI_GPU:-}" ]; then multi; phase done; return 0; fi
  if [ -n "${PROBE_THREADS:-}" ]; then  # prompt-time spread against llama.cpp's CPU threads
    set -- $MODELS; phase "threads probe ${1} ($PROBE_THREADS)"
    for t in $PROBE_THREADS; do for fa in 0 1; do
      LD_LIBRARY_PATH=$PWD/builds/${VARIANTS%% *}/lib builds/${VARIANTS%% *}/bin/llama-bench \
        -m "$(path_of "$1")" -ngl 99 -b 2048 -ub 1024 -fa $fa -t "$t" -p 2048 -n 0 -r 10 -o jsonl \
        >> "$BENCH/out/threads-probe.jsonl" 2>> "$BENCH/threads-probe.log"
    done; done
    python3 - "$BENCH/out/threads-probe.jsonl" <<'PY' | tee "$BENCH/out/threads-probe.md"
import json, statistics, sys
print("| threads | fa | pp t/s median | min | max | samples |")
for line in open(sys.argv[1]):
    r = json.loads(line); ts = r["samples_ts"]
    print(f"| {r['n_threads']} | {int(r['flash_attn'])} | {statistics.median(ts):,.0f} | {min(ts):,.0f} | "
          f"{max(ts):,.0f} | {' '.join(f'{x:,.0f}' for x in ts)} |")
PY
  fi
  if [ -n "${POLL_PROBE:-}" ]; then  # llama-bench's prompt speed at its default --poll 50 and at 0
    # POLL_PROBE="b/u/fa ..." (e.g. "2048/1024/0 2048/2048/1"), POLL_PROCS fresh processes
    # per config and poll value, interleaved; f16 cache, pp2048 at depth 0, 16 CPU threads.
    set -- $MODELS; phase "poll probe ${1} ($POLL_PROBE)"
    for i in $(seq "${POLL_PROCS:-3}"); do for c in $POLL_PROBE; do for poll in 50 0; do
      IFS=/ read -r b u fa <<< "$c"
      LD_LIBRARY_PATH=$PWD/builds/${VARIANTS%% *}/lib builds/${VARIANTS%% *}/bin/llama-bench \
        -m "$(path_of "$1")" -ngl 99 -b "$b" -ub "$u" -fa "$fa" -t 16 --poll "$poll" -p 2048 \
        -n 0 -r 5 -o jsonl | sed "s/^{/{\"poll\": $poll, \"proc\": $i, /" \
        >> "$BENCH/out/poll-probe.jsonl" 2>> "$BENCH/poll-probe.log"
    done; done; done
    python3 - "$BENCH/out/poll-probe.jsonl" <<'PY' | tee "$BENCH/out/poll-probe.md"
import json, statistics, sys
from collections import defaultdict
per = defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    per[(r["n_batch"], r["n_ubatch"], str(r["flash_attn"]), r["poll"])].append(statistics.median(r["samples_ts"]))
print("| b/u | fa | poll | pp2048 t/s per process (median of 5) | median over processes |")
print("|---|---|---|---|---|")
for (b, u, fa, poll), xs in sorted(per.items()):
    print(f"| {b}/{u} | {fa} | {poll} | {', '.join(f'{x:,.0f}' for x in xs)} | {statistics.median(xs):,.0f} |")
PY
  fi
  if [ -n "${SPREAD_CONFIGS:-}" ]; then  # where a prompt figure's spread comes from
    set -- $MODELS; phase "prompt spread ${1} ($SPREAD_CONFIGS)"
    cfgs=(); for c in $SPREAD_CONFIGS; do cfgs+=(--config "$c"); done
    python3 docs/benchmarks/probes/prompt_spread.py --model "$(path_of "$1")" --builds builds \
      --build "${VARIANTS%% *}" "${cfgs[@]}" --procs "${SPREAD_PROCS:-6}" --reps "${SPREAD_REPS:-12}" \
      --pin "${SPREAD_PIN-3}" ${SPREAD_LB_EXTRA:+--lb-extra "$SPREAD_LB_EXTRA"} \
      --out "$BENCH/out/spread" > "$BENCH/spread.log" 2>&1
    echo "spread exit $?" >> "$BENCH/spread.log"
  fi
  [ -n "${NO_SWEEP:-}" ] && { phase done; return 0; }
  for m in $MODELS; do
    name=${m/:/-}
    phase "sweep $m"
    sweep "$m" "$name" ${SWEEP_ARGS:-}
    [ -n "${NO_FIDELITY:-}" ] && continue  # the sweep alone (e.g. a sampler's time and trials)
    phase "llama-bench over the space $m"  # right after the sweep: the machine's level moves
    python3 benchmarks/fidelity_space.py --model "$(path_of "$m")" --results "$BENCH/results-$name" \
      --builds builds --out "$BENCH/out/$name" --lb-args "${LB_ARGS:-}" > "$BENCH/fidelity-$name.log" 2>&1
    echo "fidelity exit $?" >> "$BENCH/fidelity-$name.log"
    if [ -n "${GRID_COMPARE:-}" ]; then  # the exhaustive grid, against llama-bench's pass above
      phase "grid sweep $m"
      sweep "$m" "$name-grid" --sampler grid
      python3 benchmarks/search_compare.py --grid-results "$BENCH/results-$name-grid" \
        --grid-fidelity "$BENCH/out/$name/fidelity_space.json" --grid-log "$BENCH/sweep-$name-grid.log" \
        --tpe-results "$BENCH/results-$name" --tpe-log "$BENCH/sweep-$name.log" \
        --out "$BENCH/out/$name" > "$BENCH/compare-$name.log" 2>&1
      echo "compare exit $?" >> "$BENCH/compare-$name.log"
    fi
    if [[ " ${VERIFY_MODELS:-} " == *" $m "* ]]; then
      phase "served figures + tuner verify $m"
      python3 benchmarks/served_verify.py --results "$BENCH/results-$name" \
        --model "$(path_of "$m")" --out "$BENCH/out/$name/verified/production.yaml" \
        --builds builds --threads "${THREADS:-4,8,16}" > "$BENCH/verify-$name.log" 2>&1
      echo "verify exit $?" >> "$BENCH/verify-$name.log"
    fi
  done
  phase done
}

multi() {  # several GPUs: trials per hour on one GPU and on all ($GPUS), then a split model
  set -- $MODELS; local tp=$1 split=${2:-$1}
  for g in 0 "$GPUS"; do
    local name="gpus-${g//,/-}"
    phase "sweep $tp --gpus $g"
    s=$SECONDS; python3 -m tuner sweep --model "$(path_of "$tp")" --gpus "$g" --sampler grid \
      --finalist-rounds 0 --served-requests 0 --prompt-tokens 2048 --gen-tokens 128 \
      --results "$BENCH/results-$name" --out "$BENCH/out/$name/production.yaml" --builds builds \
      > "$BENCH/sweep-$name.log" 2>&1
    echo "sweep exit $? after $((SECONDS - s)) s" >> "$BENCH/sweep-$name.log"
  done
  python3 benchmarks/multigpu_rate.py --one "$BENCH/results-gpus-0" \
    --many "$BENCH/results-gpus-${GPUS//,/-}" | tee "$BENCH/out/multigpu-rate.md"
  phase "split $split over every GPU"
  cat > "$BENCH/split.yaml" <<YAML
builds: [${VARIANTS%% *}]
n_batch: [2048]
n_ubatch: [${SPLIT_UBATCH:-2048}]
flash_attn: [true]
kv_cache: [f16/f16]
${SPLIT_SPACE:-split_modes: [none, layer, row]}
YAML
  s=$SECONDS; python3 -m tuner sweep --model "$(path_of "$split")" --space "$BENCH/split.yaml" \
    --finalist-rounds 0 --served-requests 0 --prompt-tokens 2048 --gen-tokens 128 \
    --results "$BENCH/results-split" --out "$BENCH/out/split/production.yaml" --builds builds \
    > "$BENCH/sweep-split.log" 2>&1
  echo "sweep exit $? after $((SECONDS - s)) s" >> "$BENCH/sweep-split.log"
  python3 -m tuner report --results "$BENCH/results-split" --format md \
    -o "$BENCH/out/split-report.md" >> "$BENCH/sweep-split.log" 2>&1
}

status() {
  cat "$BENCH/phase" 2>/dev/null; tail -n 3 "$BENCH/log" 2>/dev/null
  for f in "$BENCH"/install.log "$BENCH"/installed-bench.log "$BENCH"/build-*.log "$BENCH"/modelgen.log "$BENCH"/spread.log "$BENCH"/sweep-*.log "$BENCH"/fidelity-*.log "$BENCH"/compare-*.log "$BENCH"/verify-*.log; do
    [ -f "$f" ] && echo "$f: $(tail -n 2 "$f" | cut -c1-160 | tr '\n' ' ')"
  done
}

case "${1:-status}" in
  start)
    mkdir -p "$BENCH"; [ -n "${SKIP_BUILD:-}" ] || : > "$BENCH/phase"
    # The run works in its own copy of the tree: a later call's copy of a changed working tree
    # must not reach a sweep that is running (its spawned workers import the tuner afresh).
    mkdir -p "$BENCH/src" && tar cf - --exclude=./.git --exclude=./.venv --exclude=./builds . \
      | tar xf - -C "$BENCH/src"
    [ -d builds ] && [ ! -e "$BENCH/src/builds" ] && ln -s "$PWD/builds" "$BENCH/src/builds"
    (cd "$BENCH/src" && setsid nohup bash benchmarks/gpu_bench.sh run > "$BENCH/log" 2>&1 < /dev/null &)
    echo "started; poll with: bash $0 wait 500" ;;
  run) run ;;
  prepare) export PYTHONPATH=/tmp/site:$PWD; prepare ;;
  wait)
    end=$((SECONDS + ${2:-500}))
    while [ $SECONDS -lt $end ] && ! grep -q "done\|FAILED" "$BENCH/phase" 2>/dev/null; do sleep 5; done
    status
    # A snapshot of what is done so far comes back with every poll: a lease lost between two
    # polls (run 15) then loses only what ran after the last one.
    if [ -n "${OUT:-}" ] && [ -d "$BENCH" ]; then
      tar czf "$OUT/snapshot.tar.gz" -C "$BENCH" --exclude='*.gguf' --exclude='*.f16' \
        --exclude=src --exclude='*.so*' --exclude=llama-bench . 2>/dev/null
    fi ;;
  status) status ;;
  collect)
    dest=${OUT:-$BENCH/collected}; mkdir -p "$dest"
    cd "$BENCH/src" 2>/dev/null || true  # the copy `start` ran in
    export PYTHONPATH=/tmp/site:$PWD  # the tuner installed by `run`, for the exports
    for d in "$BENCH"/results-*; do
      # The storage holds every record, the finalists and the drift; trials.jsonl is an export.
      o="$BENCH/out/$(basename "${d#*results-}")"
      [ -f "$d/optuna.db" ] && mkdir -p "$o" && cp "$d/optuna.db" "$o/" &&
        python3 -m tuner report --results "$d" --format jsonl -o "$o/trials.jsonl"
    done
    cp "$BENCH"/install.log "$BENCH"/sweep-*.log "$BENCH"/verify-*.log "$BENCH"/fidelity-*.log "$BENCH"/compare-*.log "$BENCH"/build-*.log "$BENCH"/modelgen.log "$BENCH"/spread.log "$BENCH/out/" 2>/dev/null
    tar czf "$dest/bench.tar.gz" -C "$BENCH" out phase
    cat "$BENCH"/out/phases-*.md "$BENCH"/out/shared-*.md "$BENCH"/out/poll-probe.md "$BENCH"/out/threads-probe.md "$BENCH"/out/multigpu-rate.md "$BENCH"/out/split-report.md "$BENCH"/out/spread/prompt_spread.md "$BENCH"/out/*/fidelity-*.md "$BENCH"/out/*/search-compare.md > "$dest/summary.md" 2>/dev/null
    for f in "$BENCH"/sweep-*.log; do tail -n 12 "$f"; done
    cat "$dest/summary.md" ;;
esac
