#!/usr/bin/env bash
# Session 23 call B (same binary as call A, the device still warm): main (0) against the L1 prefetch alone (4), more rounds; the AVX512 one-token GEMV's prefetches in one process (knob x23b, KT_X_AB: 0 = main (the next
# register tile's super-block into L1, the tile after it into L2), 1 = only the L2 one two tiles on, 2 = only L2 one
# tile on, 4 = only the L1 one (one tile on), 3 = none). Main at 50ad25a plus the knob.
set -uo pipefail
E=$OUT/b; mkdir -p $E; trap "cd $OUT && tar czf b.tgz b && rm -rf b" EXIT
X=/tmp/ktx; mkdir -p $X && tar xJf .device-carry/s23xb/bin.tar.xz -C $X
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s23xb/COMMIT); $(nproc) cpus"
V=0,1,2,4,3
V=0,4
for r in 1 2 3 4; do
  for s in deepseek-v3 deepseek-v2-lite; do
    KT_X_AB=$V timeout 90 $X/kt-bench moe --shape $s --format q4_k --tokens 1 --threads 16 --seconds 3 > $E/moe_${s}_$r.txt 2>&1
    log "moe $s $r rc $? $(grep x_variant $E/moe_${s}_$r.txt | sort | tr '\n' ' ')"
  done
done
KT_X_AB=$V timeout 200 $X/kt-bench matmul --formats q4_k,q6_k,q8_0 \
  --shapes 2048x7168,7168x2048,1408x2048 --tokens 1 --threads 8 --seconds 0.3 > $E/mm_t8.txt 2>&1
log "mm t8 rc $?"
log done
