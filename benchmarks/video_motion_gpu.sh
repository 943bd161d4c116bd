#!/usr/bin/env bash
# Does the absolute frame embedding make the video DiT follow the direction word? On one GPU, at the
# floor's size (16x16 clips of 8 frames, batch 32): experiment=moving_shapes_flow trained for
# TRAIN_MINUTES (default 3) with net.frame_embedding=false and =true (bf16, trainer=gpu), each
# judged on 128 clips at the default guidance (w = 3), then benchmarks/video_motion_probe.py on both
# checkpoints (does the x0 error depend on the direction word; does the s = 1 prediction move).
# Results go to $OUT (default outputs/bench/video_motion_gpu).
#   bash benchmarks/video_motion_gpu.sh
set -euo pipefail
OUT=${OUT:-outputs/bench/video_motion_gpu}
MINUTES=${TRAIN_MINUTES:-3}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # this checkout's ddpm_lab
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
CKPTS=()
for FE in false true; do
    RUN=/tmp/video_motion_gpu/fe_$FE
    $PY -m ddpm_lab.train experiment=moving_shapes_flow trainer=gpu logger=csv net.frame_embedding=$FE \
        data.num_workers=2 "trainer.max_time=00:00:0${MINUTES}:00" callbacks.sample_grid.every_n_epochs=0 \
        hydra.run.dir=$RUN > "$OUT/train_fe_$FE.log" 2>&1 || { tail -30 "$OUT/train_fe_$FE.log"; exit 1; }
    ls "$RUN/checkpoints" | tee "$OUT/ckpts_fe_$FE.txt"
    $PY -m ddpm_lab.evaluate ckpt_path=$RUN num_samples=128 batch_size=128 hydra.run.dir=$RUN/eval \
        > "$OUT/eval_fe_$FE.log" 2>&1 || { tail -30 "$OUT/eval_fe_$FE.log"; exit 1; }
    tail -8 "$OUT/eval_fe_$FE.log"
    cp "$RUN/eval/metrics.json" "$OUT/eval_fe_$FE.json" 2>/dev/null || true
    CKPTS+=(--ckpt "$RUN/checkpoints/last.ckpt")
done
$PY benchmarks/video_motion_probe.py "${CKPTS[@]}" --out "$OUT/video_motion_probe.json" 2>&1 | grep -v Warning
