#!/usr/bin/env bash
# Session 37 call K: prefetches in bursts far ahead against two a step (walk_burst.c), 16 threads, two processes.
set -uo pipefail
K=$OUT/k; mkdir -p $K
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $K/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nproc) vCPUs"
for k in 1 2; do timeout 100 .device-carry/s37k/walk_burst 9 16 > $K/burst16_$k.txt 2>&1; log "burst16 $k rc $?"; done
