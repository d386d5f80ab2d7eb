#!/usr/bin/env bash
# Session 37 call C: what work that touches no loaded byte costs a plain read (read_work.c), 16 threads
# in two processes, 8 threads once; walk_forms (call B) once more beside it.
set -uo pipefail
C=$OUT/c; mkdir -p $C
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $C/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nproc) vCPUs"
R=.device-carry/s37/read_work
for k in 1 2; do timeout 120 $R 9 16 > $C/work16_$k.txt 2>&1; log "work16 $k rc $?"; cat $C/work16_$k.txt >> $C/summary.txt; done
timeout 120 $R 9 8 > $C/work8.txt 2>&1; log "work8 rc $?"; cat $C/work8.txt >> $C/summary.txt
timeout 120 .device-carry/s37/walk_forms 9 16 > $C/forms16.txt 2>&1; log "forms16 rc $?"; cat $C/forms16.txt >> $C/summary.txt
