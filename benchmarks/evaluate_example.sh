#!/usr/bin/env bash
# The README's worked example of mdiff-evaluate, on a shared volume: train the `small` preset on
# the lower three quarters (z < 3/4 of the depth), sample 64 volumes, make a Gaussian field with
# the training region's fractions and fitted length, and judge both against the held-out slab.
#
#   bash benchmarks/evaluate_example.sh nmc_3phase_256 3 192 5      # NAME PHASES Z_CUT LENGTH
#   bash benchmarks/evaluate_example.sh berea_2phase_200 2 150 5
#   UNCONDITIONED=1 bash benchmarks/evaluate_example.sh nmc_3phase_256 3 192 5   # + --condition none
#
# The model is a new run's default: conditioned on phase fractions, each generated volume at
# fractions drawn from the training cubes (README, Composition).
# About 30 minutes of training on 2 CPU cores, 7 minutes of sampling, 1-4 minutes of judging.
# Writes runs/example_NAME/ (training, samples) and benchmarks/results/evaluate_NAME/.
# LENGTH is what mdiff.evaluate.fit_baseline finds on the training region's 32^3 cubes.
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1 phases=$2 cut=$3 length=$4
data=../shared/data/$name.tif
run=runs/example_$name
mkdir -p "$run"
python3 -c "import mdiff; v = mdiff.read_volume('$data'); mdiff.write_volume('$run/train.tif', v[:$cut])"
fractions=$(python3 -c "import mdiff, numpy as np; v = mdiff.read_volume('$run/train.tif'); print(','.join(f'{np.mean(v == l):.4f}' for l in np.unique(v)))")
if [ -f "$run/model/checkpoint.pt" ]; then                # run it again: it goes on
  mdiff-train --resume --out "$run/model" --steps 1600 --threads 1
else
  mdiff-train "$run/train.tif" --phases "$phases" --preset small --precision bf16 \
      --steps 1600 --out "$run/model" --threads 1
fi
mdiff-sample "$run/model/checkpoint.pt" "$run/samples" -n 64 --threads 1 --overwrite
mdiff-synth "$run/gauss.tif" --shape 128 --fractions "$fractions" --length "$length" --seed 1
mdiff-evaluate "$data" "$run/samples" "$run/gauss.tif" --real-region "$cut": \
    --training "$run/train.tif" --transport --out "benchmarks/results/evaluate_$name"

# With UNCONDITIONED=1: also a model trained with --condition none (the same training
# otherwise; the default before conditioning was), its 64 volumes judged beside the default
# model's: benchmarks/results/condition/evaluate_NAME/.
if [ "${UNCONDITIONED:-}" = 1 ]; then
  if [ -f "$run/plain/checkpoint.pt" ]; then
    mdiff-train --resume --out "$run/plain" --steps 1600 --threads 1
  else
    mdiff-train "$run/train.tif" --phases "$phases" --preset small --precision bf16 \
        --steps 1600 --condition none --out "$run/plain" --threads 1
  fi
  mdiff-sample "$run/plain/checkpoint.pt" "$run/samples_plain" -n 64 --threads 1 --overwrite
  mdiff-evaluate "$data" "$run/samples" "$run/samples_plain" --real-region "$cut": --transport \
      --out "benchmarks/results/condition/evaluate_$name"
fi
