#!/usr/bin/env bash
# Session 23 call E: the one-token MoE on the AVX512 row pairs (the AMX table's one-token kernel) against the AVX2
# 8-row streams, in one process (s23xe = main 43fb1f5 + x23e: KT_X_ISAS makes one MoeContext per ISA and the
# calls take turns).
set -uo pipefail
E=$OUT/e; mkdir -p $E; trap 'cd $OUT && tar czf e.tgz e && rm -rf e' EXIT
X=/tmp/ktx; mkdir -p $X && tar xJf .device-carry/s23xe/bin.tar.xz -C $X
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s23xe/COMMIT); $(nproc) cpus"
for r in 1 2 3; do
  for s in deepseek-v3 deepseek-v2-lite; do
    KT_X_ISAS=amx,avx2 timeout 60 $X/kt-bench moe --shape $s --format q4_k --tokens 1 --threads 16 --seconds 3 > $E/moe_${s}_$r.txt 2>&1
    log "moe $s $r rc $? $(grep -o 'read bandwidth [0-9.]* GB/s' $E/moe_${s}_$r.txt) $(grep x_isa $E/moe_${s}_$r.txt | tr '\n' ' ')"
  done
done
for s in deepseek-v3 deepseek-v2-lite; do
  KT_X_ISAS=amx,avx2 timeout 60 $X/kt-bench moe --shape $s --format q4_k --tokens 2 --threads 16 --seconds 3 > $E/moe_${s}_t2.txt 2>&1
  log "moe $s t2 rc $? $(grep x_isa $E/moe_${s}_t2.txt | tr '\n' ' ')"
done
log done
