#!/usr/bin/env bash
# The per-step cosine pilot: width 8, depth 2, the same images seen (T) from D = 50,000 and 6,250.
set -u
cd /work/pilot
R=/work/pilot/results
S="python sweep.py grid --width 8 --depth 2 --jobs 2 --results_dir $R"
$S --dataset_size 50000 --num_epochs 2 --scheduler cosine,cosine_step --seeds 0,1
$S --dataset_size 6250 --num_epochs 16 --scheduler cosine,cosine_step --seeds 0,1
$S --dataset_size 50000 --num_epochs 5 --scheduler cosine_step --seeds 0,1
$S --dataset_size 50000 --num_epochs 5 --scheduler cosine --seeds 1
$S --dataset_size 6250 --num_epochs 40 --scheduler cosine_step --seeds 0,1
$S --dataset_size 6250 --num_epochs 40 --scheduler cosine --seeds 1
$S --dataset_size 50000 --num_epochs 10 --scheduler cosine_step --seeds 0,1
$S --dataset_size 6250 --num_epochs 80 --scheduler cosine_step --seeds 0,1
