#!/usr/bin/env bash
# Everything a session with the GPU machine should measure, as one device call
# (device time is scarce: see ../shared/device/README.md). From the project root:
#   bash ../shared/device/pack.sh        # here, once: deno and its cache for the bare machine
#   run: source .devicekit/setup.sh; bash scripts/gpu_run.sh $OUT    (carry .devicekit)
# Writes OUTDIR/{doctor,bench_*,train_f32,train_f16,sample,test}.txt and bench_{kernels,train,sample}.json.
# Each step has its own time limit, so a slow one cannot cost the figures of the rest;
# the limits add up to 500 s, inside one call's 600. ITERS sets the training runs'
# length (default 200).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash scripts/gpu_run.sh OUTDIR}
iters=${ITERS:-200}
mkdir -p "$out"
export NO_COLOR=1
run_step() { # name seconds command...
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s, $(date +%T))"
  timeout "$limit" "$@" >"$out/$name.txt" 2>&1
  local status=$?
  tail -n 25 "$out/$name.txt"
  [ "$status" -eq 124 ] && echo "!! $name stopped at its ${limit}s limit"
  return 0
}
run_step doctor 30 deno task doctor
# The bench in its three parts, so a part that runs long cannot cost the others their JSON.
# The train and sample parts time each case untuned and with its matmuls tuned (tuning compiles the candidates).
run_step bench_kernels 150 deno task bench --only kernels --json "$out/bench_kernels.json"
run_step bench_train 90 deno task bench --only train --json "$out/bench_train.json"
run_step bench_sample 40 deno task bench --only sample --json "$out/bench_sample.json"
# The device gets the tracked files only: the token files are made there.
[ -f data/shakespeare_char/train.bin ] || run_step prepare 20 deno task prepare
# The same run in f32 and f16: the losses should agree to a few hundredths.
for dtype in f32 f16; do
  run_step "train_$dtype" 45 deno task train --config config/shakespeare_char.json --out_dir "out-gpu-$dtype" \
    --max_iters "$iters" --lr_decay_iters "$iters" --eval_interval "$iters" --eval_iters 20 --log_interval 20 --dtype "$dtype"
done
run_step sample 20 deno task sample --out_dir out-gpu-f32 --max_new_tokens 200
run_step test 60 deno task test
echo "== done ($(date +%T))"
