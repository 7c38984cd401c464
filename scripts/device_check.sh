#!/usr/bin/env bash
# One bounded run that proves (or disproves) LocalEngine's CUDA path and measures it.
#
#   OUT=/some/dir bash scripts/device_check.sh      # from anywhere; runs in the repo root
#
# 1. environment (torch, CUDA, GPU);  2. tests/denoiser/test_engine_cuda.py (pytest --noconftest);
# 3. `bench engine` on CUDA: float32 with graphs, float16 with graphs, float32 eager, float16
#    eager (through `python -m denoiser.bench.engine`: the `denoise-sfu` CLI imports the SFU's
#    media packages, which a bare GPU box lacks).
# Everything is tee'd to $OUT/device_check.log; each bench's JSON line goes to
# $OUT/bench_<variant>.json. Every step runs under `timeout`, the whole script within
# DEVICE_CHECK_BUDGET seconds (default 110; later steps are cut short or skipped to fit).
# Without CUDA the CUDA steps print "skipped: no CUDA". Always exits 0; the summary at the end
# names the steps that failed. DEVICE_CHECK_DRY_RUN=1 checks this script on a CPU machine: the
# same steps on CPU (tests via ENGINE_TEST_DEVICE=cpu, benches with the tiny test model).
set -u

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 0
: "${OUT:?set OUT to a directory for the log and results}"
mkdir -p "$OUT"

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1
export PYTHONPATH=".:tests${PYTHONPATH:+:$PYTHONPATH}"
BUDGET="${DEVICE_CHECK_BUDGET:-110}"
BENCH_FLAGS=(--device cuda --no-anchors --max-streams "${BENCH_MAX_STREAMS:-1024}"
             --seconds "${BENCH_SECONDS:-1.5}" --probe-seconds "${BENCH_PROBE_SECONDS:-0.4}")
DRY_RUN="${DEVICE_CHECK_DRY_RUN:-0}"
if ((DRY_RUN)); then
    export ENGINE_TEST_DEVICE=cpu
    BENCH_FLAGS=(--device cpu --no-anchors --model support.models:make_tiny
                 --max-streams 4 --seconds 0.5 --probe-seconds 0.2)
fi
START=$SECONDS
RESULTS=()
HAVE_CUDA=0
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# run_step NAME LIMIT_S CMD...: CMD under `timeout` (at most what is left of the budget);
# with STEP_STDOUT=FILE its stdout is also copied to FILE. Returns CMD's status.
run_step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START)))
    if ((left < 10)); then
        echo "== $name: skipped: out of time budget (${BUDGET}s)"
        RESULTS+=("$name: skipped (time budget)")
        return 0
    fi
    ((limit > left)) && limit=$left
    echo "== $name (timeout ${limit}s, $((SECONDS - START))s elapsed): $*"
    local t0=$SECONDS rc
    if [[ -n "${STEP_STDOUT:-}" ]]; then
        timeout -k 5 "$limit" "$@" | tee "$STEP_STDOUT"
        rc=${PIPESTATUS[0]}
    else
        timeout -k 5 "$limit" "$@"
        rc=$?
    fi
    local status
    if ((rc == 0)); then
        status="ok"
    elif ((rc == 124 || rc == 137)); then
        status="FAILED: timed out after ${limit}s"
    else
        status="FAILED: exit $rc"
    fi
    printf '\n== %s: %s (%ss)\n' "$name" "$status" "$((SECONDS - t0))"
    RESULTS+=("$name: $status ($((SECONDS - t0))s)")
    return "$rc"
}

skip_no_cuda() {
    echo "== $1: skipped: no CUDA"
    RESULTS+=("$1: skipped: no CUDA")
}

# bench NAME FLAGS...: one `bench engine` variant; its last stdout line -> $OUT/bench_NAME.json
bench() {
    local name=$1
    shift
    if ((!HAVE_CUDA)) || { ((DRY_RUN)) && [[ " $* " == *" --half "* ]]; }; then
        skip_no_cuda "bench $name"
        return 0
    fi
    STEP_STDOUT="$TMP/$name.out" run_step "bench $name" "${BENCH_TIMEOUT:-25}" \
        "$PYTHON" -m denoiser.bench.engine "${BENCH_FLAGS[@]}" "$@"
    [[ -e "$TMP/$name.out" ]] || return 0
    local line
    line=$(tail -n 1 "$TMP/$name.out")
    if [[ "$line" == "{"* ]]; then
        printf '%s\n' "$line" >"$OUT/bench_$name.json"
    else
        echo "== bench $name: no JSON line"
    fi
}

environment() {
    command -v nvidia-smi >/dev/null && timeout 10 nvidia-smi \
        --query-gpu=name,memory.total,driver_version,mig.mode.current --format=csv
    "$PYTHON" - <<'EOF'
import os, platform, sys

import numpy
import torch

print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA build "
      f"{torch.version.cuda}), numpy {numpy.__version__}, {os.cpu_count()} CPUs")
if not torch.cuda.is_available():
    print("CUDA available: False")
    sys.exit(0)
open(os.environ["CUDA_MARKER"], "w").close()
props = torch.cuda.get_device_properties(0)
print(f"CUDA available: True; {torch.cuda.device_count()} device(s); 0: {props.name}, "
      f"{props.total_memory / 2**30:.1f} GiB, capability {props.major}.{props.minor}")
EOF
}

summary() {
    echo
    echo "== summary ($((SECONDS - START))s)"
    printf '  %s\n' "${RESULTS[@]}"
    local f
    for f in "$OUT"/bench_*.json; do
        [[ -e "$f" ]] || continue
        "$PYTHON" - "$f" <<'EOF'
import json, sys

r = json.load(open(sys.argv[1]))
p = r["paced"]
print(f"  {sys.argv[1].rsplit('/', 1)[-1]}: {r['streams_per_core']} streams per {r['unit']} "
      f"(half={r['half']}, graphs asked={r['cuda_graphs']} used={p['graphs_used']}); paced "
      f"{p['streams']}: tick p50 {r['tick_p50_ms']} ms p99 {r['tick_p99_ms']} ms, forward p50 "
      f"{p['forward_p50_ms']} ms, kept up {p['kept_up']}; capacity "
      f"{r['capacity_streams_per_core']}")
EOF
    done
}

main() {
    echo "device check: $(date -u +%FT%TZ), $(git rev-parse --short HEAD 2>/dev/null || echo '?'), python $PYTHON, OUT $OUT"
    export PYTHON CUDA_MARKER="$TMP/cuda"
    export -f environment
    run_step environment 40 bash -c environment
    if [[ -e "$CUDA_MARKER" ]] || ((DRY_RUN)); then HAVE_CUDA=1; fi
    if ((HAVE_CUDA)); then
        run_step "tests/denoiser/test_engine_cuda.py" "${TEST_TIMEOUT:-45}" \
            "$PYTHON" -m pytest -q -s -rfEs --noconftest -p no:cacheprovider \
            tests/denoiser/test_engine_cuda.py
    else
        skip_no_cuda "tests/denoiser/test_engine_cuda.py"
    fi
    bench fp32_graphs
    bench fp16_graphs --half
    bench fp32_eager --no-graphs
    bench fp16_eager --half --no-graphs
    summary
}

main 2>&1 | tee "$OUT/device_check.log"
exit 0
