#!/usr/bin/env bash
# A lever against too-alike volumes (issue 16) for an unconditioned model, judged on spread:
# train a `small` model with the lever's mdiff-train flags and the same budget as the worked
# example of mdiff-evaluate (UNCONDITIONED=1 benchmarks/evaluate_example.sh, whose
# unconditioned model `plain` and its samples it needs), sample 64 volumes and judge them beside
# the plain model's against the held-out slab; then how strongly each network reads a cube's
# composition at high noise (benchmarks/mean_response.py).
#
#   bash benchmarks/spread_levers.sh nmc_3phase_256 3 192 mean --condition none --mean-input
#   bash benchmarks/spread_levers.sh berea_2phase_200 2 150 mean --condition none --mean-input
#   SAMPLE="--sampler ddim --steps 100 --eta 1" bash benchmarks/spread_levers.sh \
#       berea_2phase_200 2 150 ancestral                 # no flags: the plain model, resampled
#
# About 30 minutes of training on one CPU thread (none when no flags are given), 7 minutes of
# sampling (a sampler of 100 steps: 25), 2 of judging. The synthetic structure of the README: DATA=runs/example_synth/... . Writes runs/example_NAME/VARIANT/, its samples, and
# benchmarks/results/spread/evaluate_NAME_VARIANT/ and mean_response_NAME_VARIANT.json.
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1 phases=$2 cut=$3 variant=$4
shift 4
data=${DATA:-../shared/data/$name.tif}
run=runs/example_$name
model=$run/plain
if [ ! -f "$model/checkpoint.pt" ]; then
  echo "spread_levers.sh: run UNCONDITIONED=1 benchmarks/evaluate_example.sh $name first" >&2
  exit 2
fi
if [ $# -gt 0 ]; then
  model=$run/$variant
  if [ -f "$model/checkpoint.pt" ]; then
    mdiff-train --resume --out "$model" --steps 1600 --threads 1
  else
    mdiff-train "$run/train.tif" --phases "$phases" --preset small --precision bf16 \
        --steps 1600 --out "$model" --threads 1 "$@"
  fi
fi
# shellcheck disable=SC2086  # SAMPLE holds several flags
mdiff-sample "$model/checkpoint.pt" "$run/samples_$variant" -n 64 --threads 1 --overwrite \
    ${SAMPLE:-}
mdiff-evaluate "$data" "$run/samples_$variant" "$run/samples_plain" --real-region "$cut": \
    --transport --out "benchmarks/results/spread/evaluate_${name}_$variant"
if [ $# -gt 0 ]; then  # a sampler alone (no flags) leaves the network as it was
  python3 benchmarks/mean_response.py "$data" --z-cut "$cut" --threads 1 --name "${name}_$variant" \
      --results benchmarks/results/spread \
      --checkpoints "plain=$run/plain/checkpoint.pt" "$variant=$model/checkpoint.pt"
fi
