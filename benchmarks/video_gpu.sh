#!/usr/bin/env bash
# The video configs on one GPU at a larger size than the CPU runs (32x32 clips of 9 frames):
#  1. the training-step table (pixel vs latent, factorised vs full attention, our DiT vs Wan);
#  2. experiment=moving_shapes_flow trained for TRAIN_MINUTES (default 4) with trainer=gpu (bf16);
#  3. ddpm-eval of that run: 128 clips at guidance w = 0, 1, 3, 5, judged beside real clips.
# Results (JSON, the eval's metrics.json, logs) go to $OUT (default outputs/bench/gpu).
#   bash benchmarks/video_gpu.sh
set -euo pipefail
OUT=${OUT:-outputs/bench/gpu}
MINUTES=${TRAIN_MINUTES:-4}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DDPM_LAB_OUTPUTS=${DDPM_LAB_OUTPUTS:-/tmp/ddpm_lab_gpu}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
$PY benchmarks/video_train_step.py --device cuda --size 32 --frames 9 --batch 64 --steps 20 \
    --out "$OUT/video_train_step_gpu.json" 2>&1 | grep -v Warning | tail -12
$PY -m ddpm_lab.train experiment=moving_shapes_flow trainer=gpu logger=csv data.image_size=32 data.frames=9 \
    data.num_workers=2 "trainer.max_time=00:00:0${MINUTES}:00" callbacks.sample_grid.every_n_epochs=0 \
    > "$OUT/train.log" 2>&1 || { tail -30 "$OUT/train.log"; exit 1; }
grep -E "Trainable params|Epoch [0-9]+:" "$OUT/train.log" | tr '\r' '\n' | grep -E "Trainable|100%" | tail -3 || true
find "$DDPM_LAB_OUTPUTS/moving_shapes_flow" -name metrics.csv -exec cp {} "$OUT/train_metrics.csv" \;
$PY -m ddpm_lab.evaluate ckpt_path=last num_samples=128 batch_size=128 "guidance.scales=[0,1,3,5]" \
    > "$OUT/eval.log" 2>&1 || { tail -30 "$OUT/eval.log"; exit 1; }
tail -12 "$OUT/eval.log"
find "$DDPM_LAB_OUTPUTS/eval" -name metrics.json -exec cp {} "$OUT/eval_metrics.json" \;
find "$DDPM_LAB_OUTPUTS/eval" -name samples.gif -exec cp {} "$OUT/eval_samples.gif" \;
