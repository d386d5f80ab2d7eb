#!/usr/bin/env bash
# Session 37 call A: do the device's vCPUs come in host-hyperthread pairs (smt_pairs), and can a
# sibling that reads ahead bring a compute-dense stream to a plain read's rate (smt_helper)?
set -uo pipefail
A=$OUT/a; mkdir -p $A
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $A/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nproc) vCPUs"
lscpu > $A/lscpu.txt 2>&1
B=.device-carry/s37
timeout 60 $B/smt_pairs 3 > $A/pairs1.txt 2>&1; log "pairs1 rc $?"; tail -2 $A/pairs1.txt | tee -a $A/summary.txt
timeout 200 $B/smt_helper 3 > $A/helper.txt 2>&1; log "helper rc $?"; cat $A/helper.txt >> $A/summary.txt
timeout 60 $B/smt_pairs 3 > $A/pairs2.txt 2>&1; log "pairs2 rc $?"; tail -2 $A/pairs2.txt | tee -a $A/summary.txt
