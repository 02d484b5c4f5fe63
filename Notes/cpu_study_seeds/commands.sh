#!/usr/bin/env bash
# More seeds for the CPU study's configurations of width >= 12 (their noise was the pooled 1%).
set -u
cd /work/pilot
G="python sweep.py grid --depth 2 --eval_batch_size 250 --jobs 2 --results_dir /work/pilot/results_seeds"
$G --width 16 --dataset_size 6250 --num_epochs 80 --seeds 1,2
$G --width 12 --dataset_size 50000 --num_epochs 10 --seeds 1,2
$G --width 16 --dataset_size 50000 --num_epochs 10 --seeds 2
python sweep.py grid --depth 1 --eval_batch_size 250 --jobs 2 --results_dir /work/pilot/results_seeds --width 16 --dataset_size 50000 --num_epochs 10 --seeds 1,2
$G --width 24 --dataset_size 1225 --num_epochs 10 --seeds 1,2
$G --width 12 --dataset_size 6250 --num_epochs 8 --seeds 1,2
$G --width 12 --dataset_size 4820 --num_epochs 10 --seeds 1,2
$G --width 16 --dataset_size 2733 --num_epochs 10 --seeds 1,2
$G --width 24 --dataset_size 6250 --num_epochs 2 --seeds 1,2
$G --width 16 --dataset_size 6250 --num_epochs 4 --seeds 1,2
$G --width 12 --dataset_size 1446 --num_epochs 10 --seeds 1,2
