#!/usr/bin/env bash
# Session 22 call D: the AVX2 one-token streams in one process (KT_ISA=avx2; knob x22c, KT_X_AB: 0 = streams,
# main 3985c66; 1 = register tiles on adjacent rows, as before b6defd0), 16 and 8 threads.
set -uo pipefail
E=$OUT/d; mkdir -p $E; trap 'cd $OUT && tar czf d.tgz d && rm -rf d' EXIT
X=/tmp/ktx; mkdir -p $X && tar xJf .device-carry/s22xc/bin.tar.xz -C $X
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s22xc/COMMIT); $(nproc) cpus"
export KT_ISA=avx2
for th in 16 8; do
  KT_X_AB=0,1 timeout 120 $X/kt-bench matmul --formats q4_k,q5_0,q6_k,q8_0 --shapes 1408x2048,2048x1408,7168x2048,2048x7168 \
    --tokens 1 --threads $th --seconds 0.3 > $E/mm_t$th.txt 2>&1; log "mm t$th rc $?"
done
for r in 1 2; do
  for s in deepseek-v2-lite deepseek-v3; do
    KT_X_AB=0,1 timeout 60 $X/kt-bench moe --shape $s --format q4_k --tokens 1 --threads 16 --seconds 3 > $E/moe_${s}_$r.txt 2>&1
    log "moe $s $r rc $? $(grep x_variant $E/moe_${s}_$r.txt | tr '\n' ' ')"
  done
done
log done
