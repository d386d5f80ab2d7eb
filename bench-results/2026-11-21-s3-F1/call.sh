#!/usr/bin/env bash
# Session 3 final call F1: GPU tests + llama.cpp vs kt cpu vs kt hybrid (V2-Lite 27 layers, V3 6 layers).
set -uo pipefail
mkdir -p /tmp/kt-bin && tar xJf .device-carry/f1/bin.tar.xz -C /tmp/kt-bin
BIN=/tmp/kt-bin BUDGET_S=${BUDGET_S:-540} V3_LAYERS=6 bash kt-bench/scripts/device_engine.sh
