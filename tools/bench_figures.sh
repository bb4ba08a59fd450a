#!/usr/bin/env bash
# The Benchmarks page's figures: every command appends its JSON record to nbs/bench/figures.jsonl,
# which the page reads (the newest record of each command). Run on a quiet machine; about 15 minutes
# on 2 CPU cores. On a GPU, run the same commands with --device cuda and without --threads.
set -euo pipefail
cd "$(dirname "$0")/../nbs"
S=(--save bench/figures.jsonl)
dropout-residual bench train --threads 1 "${S[@]}"
dropout-residual bench train --threads 1 --dtype bfloat16 "${S[@]}"
dropout-residual bench train --threads 1 --compile on "${S[@]}"
dropout-residual bench train --threads 1 --members 20 --dropout 0.2 --steps 1 --repeats 3 --warmup 1 "${S[@]}"
dropout-residual bench grid --threads 1 "${S[@]}"
dropout-residual bench generate --threads 1 --repeats 2 --warmup 0 "${S[@]}"
dropout-residual bench generate --threads 1 --new-tokens 100 --repeats 1 --warmup 0 --dtype bfloat16 "${S[@]}"
# reproduce's own estimate for its default job (regime, 3 seeds) on a fresh results root: the README's timing line
dropout-residual reproduce --estimate --runs "$(mktemp -d)" | tail -n 1 > papers/results/reproduce_estimate.json
