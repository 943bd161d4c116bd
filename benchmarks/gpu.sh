#!/usr/bin/env bash
# benchmarks/gpu.py on the device machine (no network; system python3 with torch and Lightning):
# installs the carried wheels in .whl/ (diffusers, hydra-core, omegaconf, antlr4, mlxtend) into
# /tmp/site without dependencies, then runs every phase within BUDGET seconds (default 570).
# Table on the terminal; gpu.json, the phases' logs and the eval's samples in $OUT.
#   bash benchmarks/gpu.sh            (OUT defaults to outputs/bench/gpu)
set -uo pipefail
OUT=${OUT:-outputs/bench/gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 DDPM_LAB_OUTPUTS=${DDPM_LAB_OUTPUTS:-/tmp/ddpm_lab_gpu}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/nvidia-smi.txt"
exec $PY benchmarks/gpu.py --out "$OUT" --budget "${BUDGET:-570}" "$@"
