#!/usr/bin/env bash
# Issue 25's learning curve: what a user gains by training the default longer. One `small`
# run (one thread; the learning rate is constant after warm-up, so a run resumed to more
# steps is the same run a longer --steps would have made) on the volume minus its held-out
# slab, a copy of its checkpoint at each step count, 32 volumes sampled from each copy with
# mdiff-sample's defaults. With VARIANT and FLAGS, the same for a lever's mdiff-train flags
# (runs/curve_NAME_VARIANT/, on the same training volume).
#
#   bash benchmarks/learning_curve.sh berea_2phase_200 2 150 1600 3200 4800
#   VARIANT=connectivity FLAGS="--condition connectivity" \
#       bash benchmarks/learning_curve.sh berea_2phase_200 2 150 1600
#   DATA=runs/synth_l10.tif bash benchmarks/learning_curve.sh synth_l10 2 144 1600 3200
#   VARIANT=p64 FLAGS="--patch 64 --batch-size 1" COUNT=8 SIZE=64 \
#       bash benchmarks/learning_curve.sh berea_2phase_200 2 150 800
#
# COUNT (default 32) volumes are sampled a point, of side SIZE (default: the training cube's).
#
# Steps ran at 0.95 a second on one thread of this project's CPU on 2026-12-02 (bf16, native
# avx512_bf16), so 1600 steps are ~28 CPU minutes; each point adds ~8 minutes of sampling.
# bf16 only where the CPU has it natively (avx512_bf16 or AMX); emulated bf16 is slower than fp32,
# so elsewhere the runs are fp32 (PRECISION=... overrides; compare runs of one precision only).
# Writes runs/curve_NAME[_VARIANT]/. Judge the sets together against the held-out slab:
#   mdiff-evaluate ../shared/data/NAME.tif runs/curve_NAME/samples_* [runs/curve_NAME_V/...] \
#       --real-region CUT: --transport --out benchmarks/results/learning_curve/evaluate_NAME
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1 phases=$2 cut=$3
shift 3
data=${DATA:-../shared/data/$name.tif}
if [ -z "${PRECISION:-}" ]; then
  if grep -qE 'avx512_bf16|amx_bf16' /proc/cpuinfo; then PRECISION=bf16; else PRECISION=fp32; fi
fi
run=runs/curve_$name${VARIANT:+_$VARIANT}
mkdir -p "$run"
if [ ! -f "$run/train.tif" ]; then
  python3 -c "import mdiff; v = mdiff.read_volume('$data'); mdiff.write_volume('$run/train.tif', v[:$cut])"
fi
for steps in "$@"; do
  if [ ! -f "$run/at_$steps.pt" ]; then
    if [ -f "$run/model/checkpoint.pt" ]; then
      mdiff-train --resume --out "$run/model" --steps "$steps" --threads 1
    else
      # shellcheck disable=SC2086  # FLAGS holds several flags
      mdiff-train "$run/train.tif" --phases "$phases" --preset small --precision "$PRECISION" \
          --steps "$steps" --out "$run/model" --threads 1 ${FLAGS:-}
    fi
    cp "$run/model/checkpoint.pt" "$run/at_$steps.pt.part"
    mv "$run/at_$steps.pt.part" "$run/at_$steps.pt"
  fi
  if [ ! -f "$run/samples_$steps/samples.json" ]; then
    mdiff-sample "$run/at_$steps.pt" "$run/samples_$steps" -n "${COUNT:-32}" --threads 1 \
        ${SIZE:+--size "$SIZE"} --overwrite
  fi
done
