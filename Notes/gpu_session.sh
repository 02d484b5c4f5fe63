#!/usr/bin/env bash
# The measurements still owed to a GPU (issues 11, 13, 14, 15), cut into stages that each end
# inside one 10-minute device call. First run on an H200 on 2026-12-04 (Notes/benchmarks.md):
# smoke took 176 s, airbench --runs 8 about 40 s a variant; every pipeline bench.py compiles
# spends 10-60 s compiling and autotuning, so each bench.py here names its pipelines. The other
# timeouts are still guesses that stop a stage before the call's limit. bench.py keeps the rows
# it measured when a timeout stops it.
# On the device the image's own python (a venv first on PATH) holds torch: run the stages as they
# are; a symlink to it named python loses the venv.
#
# Here, once per session (the device gets the checkout only):
#   mkdir -p .gpu-data && cp -r ../shared/cifar10 .gpu-data/    (.gitignore already ignores it;
#   in a worktree .git is a file, so .git/info/exclude cannot be written)
# Then one device call per stage, the first one `smoke`, e.g.
#   run(command="bash Notes/gpu_session.sh speed", carry=[".gpu-data"], timeout_s=600)
# Every stage writes its tables and session.log under $OUT and its logs into $OUT/logs.tgz (a
# call brings back at most 8 files); copy the tables into Notes/benchmarks.md
# under a heading naming the device (bench.py's tables already carry device, date and commit).
# The study resumes across calls: after each `study` call, copy $OUT/study_results.tar.gz into
# .gpu-data/ here and carry .gpu-data again; the next call unpacks it first. Carry holds 64 MiB
# in all (the data is 19 MB): a width-128 run's checkpoint is ~37 MB, so check the tarball's size.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu_session}
LOGS=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
FAST="--no_deterministic --precision bf16 --channels_last --compile reduce-overhead"
log() { echo "== $(date +%T) $*" | tee -a "$OUT/session.log"; }
step() {  # step SECONDS NAME COMMAND...: one measurement, cut off at SECONDS, its log in logs.tgz
  local limit=$1 name=$2; shift 2
  log "$name: $*"
  timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
  local code=$?
  log "$name: exit $code"
  [ $code = 0 ] || tail -n 8 "$LOGS/$name.log"  # lands in the device call's output_tail
  tar czf "$OUT/logs.tgz" -C "$LOGS" .  # after every step: a call cut off still brings them
}

[ -f data/cifar-10-batches-py/test_batch ] || python .gpu-data/cifar10/prepare.py data
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$LOGS/gpu.txt" 2>&1

case "${1:-}" in
smoke)  # every CUDA-only path on a tiny problem (compile + CUDA graphs, bf16, --deterministic,
  # fused bundles in the worker, bench.py, airbench): a broken path shows here in minutes
  # instead of eating a 10-minute stage. The session's first call, alone (cut-offs: 8.5 min).
  rm -rf results/smoke
  TINY="--depth 1 --dataset_size 2000 --num_epochs 2 --test_freq 1 --results_dir results/smoke"
  step 120 smoke_fast python train.py --width 8 $TINY $FAST
  step 60 smoke_deterministic python train.py --width 8 $TINY --deterministic
  step 180 smoke_worker python sweep.py width --widths 16,32 --seeds 0,1 \
    --results_dir results/smoke -- --depth 1 --dataset_size 2000 --num_epochs 2 --test_freq 1 $FAST
  step 90 smoke_bench python bench.py --sizes 8x1 --pipelines default,fast --dataset_size 2000 \
    --warmup 1 --epochs 1 --notes "$OUT/smoke_bench.md"
  step 90 smoke_airbench python airbench.py --runs 1 --notes "$OUT/smoke_airbench.md"
  cp results/smoke/final_data.csv "$OUT/smoke_final_data.csv" 2>/dev/null
  ;;
speed)  # every pipeline's s/epoch and MFU; --deterministic on CUDA
  rm -rf results/det_a results/det_b  # a warm machine keeps them: a rerun would skip, not train
  step 400 bench_timed python bench.py --sizes 32x2,8x1,128x4 \
    --pipelines torchvision,default,nondeterministic,bf16,fast --warmup 1 --epochs 2 \
    --notes "$OUT/bench_timed.md"
  for run in a b; do
    step 60 "deterministic_$run" python train.py --width 32 --depth 2 --dataset_size 10000 \
      --num_epochs 3 --test_freq 1 --quiet --results_dir "results/det_$run"
  done
  # Identical rows apart from the time columns (7, 8) is the claim under test; two runs that
  # wrote nothing are not identical.
  if ! ls results/det_a/runs/*.csv results/det_b/runs/*.csv > /dev/null 2>&1; then
    log "deterministic: a run wrote no rows (see deterministic_*.log in logs.tgz)"
  elif diff <(cut -d, -f1-6,9- results/det_a/runs/*.csv) <(cut -d, -f1-6,9- results/det_b/runs/*.csv) \
      > "$LOGS/deterministic_diff.txt"; then
    log "deterministic: identical rows"
  else
    log "deterministic: rows DIFFER (see deterministic_diff.txt in logs.tgz)"
  fi
  ;;
recipe)  # the scaling recipe end to end, default vs fast, 3 seeds each
  step 560 bench_full python bench.py --sizes 32x2 --pipelines default,fast --warmup 1 \
    --epochs 1 --full --seeds 3 --notes "$OUT/bench_full.md"
  ;;
airbench|airbench_variants)  # baseline (bf16; fp16 as the reference
  # runs it) and the reproduction's three variants, 8 runs each, two stages of ~3 runs of 8
  if [ "$1" = airbench ]; then
    variants=("" "--precision fp16" "--translate_schedule cyclic")
  else
    variants=("--label_smoothing_final 0.0" "--whiten_unfreeze_epoch 5")
  fi
  for variant in "${variants[@]}"; do
    name=airbench_$(echo "${variant:-baseline}" | tr -dc 'a-z0-9_')
    step 170 "$name" python airbench.py --runs 8 $variant --notes "$OUT/airbench.md"
  done
  ;;
resnet8)  # the ResNet-8 study's presets at their 200 epochs (> 70% test accuracy)
  for preset in resnet8_sgd resnet8_adamw; do
    step 270 "$preset" python train.py --preset $preset $FAST --results_dir results/resnet8
  done
  cp results/resnet8/final_data.csv "$OUT/resnet8_final_data.csv" 2>/dev/null
  ;;
engine)  # fused vs single images/s and GPU utilisation (bundles of 1, 3, 6, 18)
  step 560 engine_fusion python bench.py --sweep width --engines '' --out "$OUT/engine"
  ;;
engine_sweep)  # the width plan (18 runs, 100 epochs) through the worker; target 6 min
  step 560 engine_worker python bench.py --sweep width --engines worker --fused_copies '' \
    --out "$OUT/engine"
  ;;
study)  # the study, resumed from the last call's results
  [ -f .gpu-data/study_results.tar.gz ] && tar xzf .gpu-data/study_results.tar.gz
  step 520 study python sweep.py study --results_dir results/study -- $FAST
  # Checkpoints stay behind: a width-128 one is tens of MB and carried files are capped at 64 MiB
  # in all, so runs cut off by the time limit restart from their first epoch in the next call.
  tar czf "$OUT/study_results.tar.gz" --exclude='*.ckpt.pt' results/study
  # what is done against the plan's size (--dry_run prints the whole plan, not what is left)
  { echo "rows in results/study/final_data.csv: $(($(wc -l < results/study/final_data.csv) - 1))"
    python sweep.py study --dry_run --results_dir results/study -- $FAST 2>&1 >/dev/null \
      | grep "study plan"; } > "$OUT/study_left.txt" 2>&1
  ;;
*)
  echo "usage: bash Notes/gpu_session.sh smoke|speed|recipe|airbench|airbench_variants|resnet8|engine|engine_sweep|study" >&2
  exit 2
  ;;
esac
log "done"
