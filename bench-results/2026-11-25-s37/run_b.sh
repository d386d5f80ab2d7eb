#!/usr/bin/env bash
# Session 37 call B: the kernel-like walk taken apart (walk_forms.c), 16 threads, two processes; 8 threads once.
set -uo pipefail
B=$OUT/b; mkdir -p $B
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $B/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nproc) vCPUs"
W=.device-carry/s37/walk_forms
for k in 1 2; do timeout 120 $W 9 16 > $B/forms16_$k.txt 2>&1; log "forms16 $k rc $?"; cat $B/forms16_$k.txt >> $B/summary.txt; done
timeout 120 $W 9 8 > $B/forms8.txt 2>&1; log "forms8 rc $?"; cat $B/forms8.txt >> $B/summary.txt
