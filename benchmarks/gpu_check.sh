#!/usr/bin/env bash
# Short GPU check (device machine): unit tests on CUDA, the main job with bf16-mixed, and the
# training-step benchmark on CUDA. Writes into $OUT (or outputs/gpu_check).
set -uo pipefail
OUT=${OUT:-outputs/gpu_check}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -p no:cacheprovider tests/test_nets.py tests/test_schedules.py tests/test_process.py 2>&1 | tail -3
start=$(date +%s)
python3 -m ddpm_lab.train experiment=digits_ddpm trainer=gpu logger=csv hydra.run.dir="$OUT/run" \
  callbacks.progress_bar.refresh_rate=100 2>&1 | grep -vE "it/s" | tail -5
echo "digits_ddpm on GPU (bf16-mixed): $(( $(date +%s) - start )) s"
cp "$OUT/run/samples/final.png" "$OUT/gpu_final.png" 2>/dev/null
tail -3 "$OUT/run/csv/metrics.csv"
rm -rf "$OUT/run"
python3 benchmarks/train_step.py --device cuda --steps 80 --repeats 3 --out "$OUT/train_step_gpu.json" 2>&1 | grep -vE "it/s|Epoch" | tail -8
