#!/usr/bin/env bash
# The GPU part of the 2D -> 3D figures (README "From 2D images"): the models were trained on the
# 2-core CPU; here 16 volumes of each are generated (2D models fused and cycled, 3D models
# beside them), the cost of a 64^3 and a 128^3 volume is measured, and, time allowing, a
# conditioned and an unconditioned `small` model train for 150 s each on the Berea training
# slab (issue 16's GPU figure). Inputs in runs/gpu/ (strip_checkpoint.py copies, the Berea
# slab z < 150 as berea_train.tif); outputs in $WORK (default runs/gpu/out), packed at the end
# into $PACK/gpu_from_2d.tgz when PACK is set (the device tool brings back few files: hundreds
# of volumes must travel as one archive).
#
#   PACK=$OUT bash benchmarks/gpu_from_2d.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${WORK:-runs/gpu/out}
mkdir -p "$OUT"
start=$SECONDS
python3 -m pip install --no-deps --no-build-isolation -e . -q > "$OUT/install.log" 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/device.txt"
sample() { python3 -m mdiff sample "$@" --seed 0 --batch 16 --overwrite 2>&1 | tail -n 1; }
for name in nmc berea; do
  size=64; [ "$name" = berea ] && size=48            # Berea's held-out slab is 50 thick
  for model in slice dims2; do
    for fuse in mean cycle; do
      sample "runs/gpu/${name}_$model.pt" "$OUT/${name}_${model}_$fuse" -n 16 --size $size \
          --fuse $fuse --slices 1024
    done
  done
  sample "runs/gpu/${name}_3d.pt" "$OUT/${name}_3d" -n 16 --size $size
done
sample runs/gpu/nmc_slice.pt "$OUT/nmc_slice_128" -n 2 --size 128 --fuse mean --slices 1024
echo "sampling done at $((SECONDS - start)) s"
python3 benchmarks/from_2d_cost.py slice=runs/gpu/nmc_slice.pt dims2=runs/gpu/nmc_dims2.pt \
    3d=runs/gpu/nmc_3d.pt --sizes 64 128 --slices 1024 --out "$OUT/cost.json"
echo "cost done at $((SECONDS - start)) s"
if [ $((SECONDS - start)) -lt 200 ] && [ -f runs/gpu/berea_train.tif ]; then
  for cond in none fractions; do
    timeout -s INT 150 python3 -m mdiff train runs/gpu/berea_train.tif --phases 2 \
        --preset small --condition $cond --steps 100000 --save-every 250 \
        --out "$OUT/berea_small_$cond" > "$OUT/train_berea_small_$cond.log" 2>&1
    tail -n 2 "$OUT/train_berea_small_$cond.log"
    python3 benchmarks/strip_checkpoint.py "$OUT/berea_small_$cond/checkpoint.pt" \
        "$OUT/berea_small_$cond.pt" && rm -f "$OUT/berea_small_$cond/checkpoint.pt"
    sample "$OUT/berea_small_$cond.pt" "$OUT/berea_small_${cond}_samples" -n 64
  done
fi
echo "all done at $((SECONDS - start)) s"
if [ -n "${PACK:-}" ]; then tar -C "$OUT" -czf "$PACK/gpu_from_2d.tgz" --exclude='*.pt' .; fi
