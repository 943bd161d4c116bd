#!/usr/bin/env bash
# Short GPU check (device machine): unit tests on the GPU machine, and the training-step and
# sampling benchmarks on CUDA. Writes JSON into $OUT (or outputs/gpu_check).
set -uo pipefail
OUT=${OUT:-outputs/gpu_check}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -p no:cacheprovider tests/test_nets.py tests/test_schedules.py tests/test_process.py tests/test_metrics.py 2>&1 | tail -2
for net in unet_small diffusers_unet2d; do
  python3 benchmarks/train_step.py --net $net --device cuda --steps 80 --repeats 3 --out "$OUT/train_step_$net.json" 2>&1 | grep -vE "it/s|Epoch|GPU|TPU|Tip|LOCAL_RANK|warn" | tail -9
done
python3 benchmarks/sampling.py --device cuda --steps 200 --batch-size 256 --out "$OUT/sampling.json" 2>&1 | tail -8
