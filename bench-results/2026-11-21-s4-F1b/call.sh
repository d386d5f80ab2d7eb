#!/usr/bin/env bash
# Session 4 final call F1b: llama.cpp vs kt cpu vs kt hybrid on V3-shaped files of 6 layers (3 dense +
# 3 MoE, with the GPU-prefill crossover) and 4 layers (3 dense + 1 MoE): per-MoE-layer costs.
set -uo pipefail
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s4f1/bin.tar.xz -C $B
BIN=$B TESTS=0 BUDGET_S=${BUDGET_S:-560} V2L=0 V3_LAYERS=6 V3_SLOPE_LAYERS=4 CROSSOVER=1 bash kt-bench/scripts/device_engine.sh
cat $OUT/engine/summary.txt
