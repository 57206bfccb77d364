#!/usr/bin/env bash
# The prepared phantom training set the long CPU runs of the model card train on:
# small phantoms 1-64 (33-64 thick), full-size phantoms 201-208 (205-208 thick), validation
# 501 (thin NCCT) and 502 (CTPA 2.5 mm). Thick slices: 3 mm where the seed is a multiple of 3,
# else 2.5 mm (as hipas_core.sts.phantom_cases.phantom_plan plans them). A case folder already
# there is kept, so a stopped run picks up where it was. Logs: OUT_DIR.logs/CASE.log.
#
#   models/prepare_phantom_training_set.sh OUT_DIR [PARALLEL_JOBS]
set -euo pipefail
out=${1:?usage: $0 OUT_DIR [PARALLEL_JOBS]}
jobs=${2:-2}
hipas=${HIPAS:-hipas}
logs="$out.logs"
mkdir -p "$out" "$logs"
thickness() { if (( $1 % 3 == 0 )); then echo 3.0; else echo 2.5; fi; }
{
  for seed in $(seq 1 64); do
    extra=""; (( seed > 32 )) && extra="--slice-thickness $(thickness "$seed")"
    printf 'small-%03d --phantom-seed %d %s\n' "$seed" "$seed" "$extra"
  done
  for seed in $(seq 201 208); do
    extra=""; (( seed > 204 )) && extra="--slice-thickness $(thickness "$seed")"
    printf 'full-%d --phantom-seed %d --phantom-size full %s\n' "$seed" "$seed" "$extra"
  done
  echo "val-501 --phantom-seed 501"
  echo "val-502 --phantom-seed 502 --slice-thickness 2.5"
} | while read -r case_id options; do
  [[ -f "$out/$case_id/case.json" ]] || echo "$case_id $options"
done | xargs -P "$jobs" -L 1 bash -c 'case_id=$0; OMP_NUM_THREADS=1 '"$hipas"' prepare-training "$@" --case-id "$case_id" --out '"$out"'/"$case_id" > '"$logs"'/"$case_id".log 2>&1 || { echo "$case_id failed (see '"$logs"'/$case_id.log)" >&2; exit 255; }'
"$hipas" training-manifest --cases "$out" -o "$out/manifest.tsv" --val val-501,val-502
