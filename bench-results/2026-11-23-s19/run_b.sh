#!/usr/bin/env bash
# Session 19 call B (x19b experiment build): where an AMX GEMM step's time goes. X_KNOB skips stages of the
# K-quant pipeline (1 products, 2 scaling, 4 unpacking; results wrong on purpose), the variants taking turns
# call by call in one process (KT_X_AB), at 1 and 16 threads; then the V3 Q4_K MoE at 512 tokens per variant
# (KT_X_KNOB, separate processes).
set -uo pipefail
E=$OUT/b; mkdir -p $E; trap 'cd $OUT && tar czf b.tgz b && rm -rf b' EXIT
B=/tmp/kt; mkdir -p $B && tar xJf .device-carry/s19b/bin.tar.xz -C $B
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s19b/COMMIT)"
V=0,1,2,4,3,5,6,7
for th in 16 1; do
  for f in q8_0 q4_K; do
    KT_X_AB=$V timeout 150 $B/kt-bench matmul --threads $th --formats $f --shapes 2048x7168,7168x2048 --tokens 512 --seconds 0.3 >> $E/mm_t$th.txt 2>&1
    log "threads $th $f rc $?"
  done
done
i=0; for v in 0 1 2 4 7 0; do i=$((i+1))
  [ $((SECONDS-t0)) -gt 520 ] && continue
  KT_X_KNOB=$v timeout 60 $B/kt-bench moe --shape deepseek-v3 --format q4_k --tokens 512 --threads 16 --json > $E/moe_${i}_v$v.json 2>>$E/moe_err.txt
  log "moe v$v rc $? $(python3 -c "import json,sys; d=json.load(open('$E/moe_${i}_v$v.json')); print(d['ms_per_call'])" 2>&1 | tail -1)"
done
log done
