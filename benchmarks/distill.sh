#!/usr/bin/env bash
# Issue 26's comparison of distillation methods on one teacher and one CPU budget: the
# endpoint student at three distillation lengths (a run resumed to more steps is the same run
# a longer --iterations would have made) and the progressive student, side by side on one
# thread each; 32 volumes of 32^3 from each with mdiff-sample's defaults, and the teacher's
# own dpm++ at 4 steps (the same calls without distillation) as the floor.
#
#   bash benchmarks/distill.sh runs/curve_nmc_3phase_256/at_750.pt runs/distill_nmc
#
# Then judge every set together against the teacher's held-out slab, e.g.
#   mdiff-evaluate ../shared/data/nmc_3phase_256.tif runs/curve_nmc_3phase_256/samples_750 \
#       runs/distill_nmc/*/samples --real-region 192: --transport \
#       --out benchmarks/results/distill/evaluate_nmc_3phase_256
set -euo pipefail
cd "$(dirname "$0")/.."
teacher=$1 out=$2
mkdir -p "$out"
endpoint() {
  for it in ${ENDPOINT_POINTS:-75 150 300}; do
    if [ ! -f "$out/endpoint_$it/student.pt" ]; then
      if [ -f "$out/endpoint/checkpoint.pt" ]; then
        mdiff-distill --resume --out "$out/endpoint" --iterations "$it" --threads 1
      else
        mdiff-distill "$teacher" --out "$out/endpoint" --method endpoint \
            --trajectories "${TRAJECTORIES:-48}" --iterations "$it" --threads 1
      fi
      mkdir -p "$out/endpoint_$it"
      cp "$out/endpoint/checkpoint.pt" "$out/endpoint_$it/student.pt"
    fi
    [ -f "$out/endpoint_$it/samples/samples.json" ] || \
      mdiff-sample "$out/endpoint_$it/student.pt" "$out/endpoint_$it/samples" -n 32 --threads 1
  done
}
progressive() {
  it=${PROGRESSIVE_ITERATIONS:-240}
  if [ ! -f "$out/progressive_$it/student.pt" ]; then
    mdiff-distill "$teacher" --out "$out/progressive" --method progressive \
        --teacher-steps "${TEACHER_STEPS:-16}" --iterations "$it" --threads 1
    mkdir -p "$out/progressive_$it"
    cp "$out/progressive/checkpoint.pt" "$out/progressive_$it/student.pt"
  fi
  [ -f "$out/progressive_$it/samples/samples.json" ] || \
    mdiff-sample "$out/progressive_$it/student.pt" "$out/progressive_$it/samples" -n 32 \
        --threads 1
  [ -f "$out/teacher_dpm4/samples/samples.json" ] || \
    mdiff-sample "$teacher" "$out/teacher_dpm4/samples" -n 32 --steps 4 --threads 1
}
( time endpoint ) > "$out/endpoint.log" 2>&1 &
( time progressive ) > "$out/progressive.log" 2>&1 &
wait
