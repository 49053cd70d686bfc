#!/usr/bin/env bash
# The README's 2D -> 3D figures on a shared volume: a 2D model trained on ONE xy slice (the
# mid-depth of the training slab z < CUT; the slab above CUT is held out), a 2D model trained
# on every slice of the slab along every axis (--dims 2), each sampled by multi-plane denoising
# fused and cycled, and the 3D `small` model of benchmarks/evaluate_example.sh beside them;
# 16 volumes of SIZE^3 each, judged against the held-out real cubes.
#
#   bash benchmarks/from_2d.sh nmc_3phase_256 3 192 64       # NAME PHASES CUT SIZE
#   bash benchmarks/from_2d.sh berea_2phase_200 2 150 48     # (Berea's held-out slab: 50 thick)
#
# About 27 minutes of training per 2D model on one CPU thread (4000 steps, bf16: the CPU time
# of the 3D model's 1600 steps), run two at a time; sampling with --fuse mean takes about a
# minute per 64^3 volume on 2 CPU cores, so the figures in the README sampled on a GPU
# (benchmarks/gpu_from_2d.sh, the same commands). Writes runs/from_2d_NAME/ and
# benchmarks/results/from_2d/.
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1 phases=$2 cut=$3 size=$4
data=../shared/data/$name.tif
run=runs/from_2d_$name
mkdir -p "$run"
python3 -c "import mdiff, tifffile; v = mdiff.read_volume('$data'); \
mdiff.write_volume('$run/train.tif', v[:$cut]); tifffile.imwrite('$run/slice.tif', v[$cut // 2])"
train() {  # OUT DATA... : a run that exists goes on instead
  local out=$1; shift
  if [ -f "$out/checkpoint.pt" ]; then mdiff-train --resume --out "$out" --steps 4000 --threads 1
  else mdiff-train "$@" --phases "$phases" --precision bf16 --steps 4000 --out "$out" --threads 1
  fi
}
train "$run/slice" "$run/slice.tif" > "$run/train_slice.log" 2>&1 &
train "$run/dims2" "$run/train.tif" --dims 2 > "$run/train_dims2.log" 2>&1 &
wait
if [ ! -f "runs/example_$name/model/checkpoint.pt" ]; then
  bash benchmarks/evaluate_example.sh "$name" "$phases" "$cut" 5   # the 3D model beside them
fi
sets=()
for model in slice dims2; do
  for fuse in mean cycle; do
    mdiff-sample "$run/$model/checkpoint.pt" "$run/${model}_$fuse" -n 16 --size "$size" \
        --fuse "$fuse" --overwrite
    sets+=("${model}_$fuse=$run/${model}_$fuse")
  done
done
mdiff-sample "runs/example_$name/model/checkpoint.pt" "$run/3d" -n 16 --size "$size" --overwrite
sets+=("3d=$run/3d")
python3 benchmarks/from_2d.py "$data" --real-region "$cut": --size "$size" --real-stride \
    $((size / 2)) "${sets[@]}" --out "benchmarks/results/from_2d/$name.json"
mdiff-evaluate "$data" "$run/slice_mean" "$run/dims2_mean" "$run/slice_cycle" "$run/3d" \
    --real-region "$cut": --size "$size" --transport --out "benchmarks/results/from_2d/evaluate_$name"
