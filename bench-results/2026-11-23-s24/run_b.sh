#!/usr/bin/env bash
# Session 24 call B: where the fused one-token MoE job's time goes at 16 threads: per-item TSC stamps (KT_X_TRACE=N
# traced calls per variant after the timed ones), knob x24 0 = main, 1 = loads only. Branch x24 at COMMIT.
set -uo pipefail
E=$OUT/b; mkdir -p $E; trap "cd $OUT && tar czf b.tgz b && rm -rf b" EXIT
X=/tmp/ktx; mkdir -p $X && tar xJf .device-carry/s24xb/bin.tar.xz -C $X
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s24xb/COMMIT); $(nproc) cpus"
for r in 1 2; do
  for s in deepseek-v3 deepseek-v2-lite; do
    KT_X_TRACE=300 KT_X_AB=0,1 timeout 90 $X/kt-bench moe --shape $s --format q4_k --tokens 1 --threads 16 --seconds 2 > $E/moe_${s}_$r.txt 2>&1
    log "moe $s $r rc $? $(grep -o 'read bandwidth [0-9.]* GB/s' $E/moe_${s}_$r.txt)"; grep x_ $E/moe_${s}_$r.txt | tee -a $E/summary.txt
  done
done
for t in 8 15; do
  KT_X_TRACE=300 KT_X_AB=0,1 timeout 90 $X/kt-bench moe --shape deepseek-v2-lite --format q4_k --tokens 1 --threads $t --seconds 2 > $E/moe_v2l_t$t.txt 2>&1
  log "moe v2l t$t rc $? $(grep -o 'read bandwidth [0-9.]* GB/s' $E/moe_v2l_t$t.txt)"; grep x_ $E/moe_v2l_t$t.txt | tee -a $E/summary.txt
done
log done
