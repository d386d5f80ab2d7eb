#!/usr/bin/env bash
# Session 37 call D: a kernel-like walk in two phases per chunk (plain read, then arithmetic from the
# caches) against the interleaved walk with a prefetch (walk_phase.c), 16 threads, two processes.
set -uo pipefail
D=$OUT/d; mkdir -p $D
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $D/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nproc) vCPUs"
P=.device-carry/s37/walk_phase
for k in 1 2; do timeout 120 $P 9 16 > $D/phase16_$k.txt 2>&1; log "phase16 $k rc $?"; cat $D/phase16_$k.txt >> $D/summary.txt; done
