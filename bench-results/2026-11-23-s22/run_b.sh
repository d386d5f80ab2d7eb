#!/usr/bin/env bash
# Session 22 call B. s22x = main + knob x22 (bits 0-1: one-token GEMV items per thread; 0 = main's rule (4 where a
# thread's share is >= 160 KiB, else 1), 1 = 1, 2 = 2, 3 = 8), the variants taking turns call by call (KT_X_AB).
set -uo pipefail
E=$OUT/b; mkdir -p $E; trap 'cd $OUT && tar czf b.tgz b && rm -rf b' EXIT
X=/tmp/ktx; mkdir -p $X && tar xJf .device-carry/s22x/bin.tar.xz -C $X
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s22x/COMMIT); $(nproc) cpus"
for f in q4_k q6_k q8_0 q5_k q2_k bf16; do
  [ $((SECONDS-t0)) -gt 420 ] && continue
  KT_X_AB=0,1,2,3 timeout 120 $X/kt-bench matmul --formats $f --tokens 1 --threads 16 --seconds 0.3 > $E/mm_$f.txt 2>&1
  log "mm $f rc $?"
done
for th in 8 12; do
  [ $((SECONDS-t0)) -gt 500 ] && continue
  KT_X_AB=0,1 timeout 60 $X/kt-bench matmul --formats q4_k --tokens 1 --threads $th --seconds 0.3 > $E/mm_q4_k_t$th.txt 2>&1
  log "mm q4_k t$th rc $?"
done
grep -h "" $E/mm_*.txt | grep -E "^v|bench" > $E/all.txt
log done
