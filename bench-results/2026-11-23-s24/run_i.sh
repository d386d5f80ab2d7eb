#!/usr/bin/env bash
# Session 24 call I: the final code (CPU build at COMMIT) on issue 2's one-token GEMVs (all six formats, five shapes,
# 16 threads, cycling 16 x the LLC) and issue 4's one-token MoE rows, two processes each.
set -uo pipefail
E=$OUT/i; mkdir -p $E; trap "cd $OUT && tar czf i.tgz i && rm -rf i" EXIT
B=/tmp/kt-bin; mkdir -p $B && xz -dc .device-carry/s24final/kt-bench.xz > $B/kt-bench && chmod +x $B/kt-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s24final/COMMIT); $(nproc) cpus"
for r in 1 2; do
  timeout 250 $B/kt-bench matmul --tokens 1 --threads 16 --seconds 0.3 > $E/mm_$r.txt 2>&1; log "mm $r rc $?"
  for s in deepseek-v3 deepseek-v2-lite; do
    timeout 60 $B/kt-bench moe --shape $s --format q4_k --tokens 1 --threads 16 --seconds 2 > $E/moe_${s}_$r.txt 2>&1
    log "moe $s $r rc $? $(grep -o '^[0-9.]* ms/call.*of bw' $E/moe_${s}_$r.txt)"
  done
done
cat $E/mm_1.txt $E/mm_2.txt
log done
