#!/usr/bin/env bash
# Session 24 call C: the fused one-token MoE job's serial ends, in one process (knob x24 bits, KT_X_AB):
# 0 = main; 8 = the combine inside the job (the last down item of each 32-row block combines it); 16 = at one token
# every position reads the one quantized row (no copies); 32 = the last expert's down items of 32 rows.
# Each variant's output is checked against main's (x_check) and 300 calls a variant traced. Branch x24 at COMMIT.
set -uo pipefail
E=$OUT/c; mkdir -p $E; trap "cd $OUT && tar czf c.tgz c && rm -rf c" EXIT
X=/tmp/ktx; mkdir -p $X && tar xJf .device-carry/s24xc/bin.tar.xz -C $X
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s24xc/COMMIT); $(nproc) cpus"
V=0,8,24,56
for r in 1 2 3; do
  for s in deepseek-v3 deepseek-v2-lite; do
    KT_X_TRACE=200 KT_X_AB=$V timeout 90 $X/kt-bench moe --shape $s --format q4_k --tokens 1 --threads 16 --seconds 3 > $E/moe_${s}_$r.txt 2>&1
    log "moe $s $r rc $? $(grep -o 'read bandwidth [0-9.]* GB/s' $E/moe_${s}_$r.txt)"; grep x_ $E/moe_${s}_$r.txt | tee -a $E/summary.txt
  done
done
for t in 2 4; do
  KT_X_AB=$V timeout 90 $X/kt-bench moe --shape deepseek-v2-lite --format q4_k --tokens $t --threads 16 --seconds 2 > $E/moe_v2l_T$t.txt 2>&1
  log "moe v2l T$t rc $?"; grep x_ $E/moe_v2l_T$t.txt | tee -a $E/summary.txt
done
log done
