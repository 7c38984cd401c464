#!/usr/bin/env bash
# One call on a lent GPU box (device `run`, carry .gpu and .whl; docs/training.md, "A GPU
# session"): the engine's CUDA check and benches (scripts/device_check.sh), the small rung's
# `bench engine` on CUDA, then models/plans/h200_2026-12-04.json (the default fine-tuned with
# competing talkers 12-24 dB under the wanted voice in 60 % of the mixes, and the small rung
# distilled further), about 9 minutes in all. Results: $OUT/check.tar, $OUT/runs.tar,
# $OUT/train.log.
set -u
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:.:tests PYTHONUNBUFFERED=1 DENOISE_SFU_LIBOPUS=$PWD/.gpu/libopus.so
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/train.log"
mkdir -p /tmp/check /tmp/runs
OUT=/tmp/check DEVICE_CHECK_BUDGET=110 PYTHON=python3 bash scripts/device_check.sh > /dev/null 2>&1
timeout 70 python3 -m denoiser.bench.engine --device cuda --model small --no-anchors \
    --max-streams 4096 --seconds 1.5 --probe-seconds 0.4 > /tmp/check/bench_small_cuda.log 2>&1
tail -1 /tmp/check/bench_small_cuda.log > /tmp/check/bench_small_cuda.json
tar -C /tmp -cf "$OUT/check.tar" check
timeout 330 python3 -m denoiser.training.together models/plans/h200_2026-12-04.json \
    --data .gpu/data --out /tmp/runs --budget 250 --workers 14 --device cuda --threads 2 \
    2>&1 | tee -a "$OUT/train.log"
tar -C /tmp -cf "$OUT/runs.tar" runs
ls -la "$OUT"
