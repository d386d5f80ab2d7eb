#!/usr/bin/env bash
# Session 19 call H (x19c at COMMIT): the AMX GEMM's output lines fetched for writing ahead of the row block's end.
# X_KNOB: 32 = prefetchw of the block's output lines spread over the first half of its steps, 64 = all at its first
# step, 128 = prefetcht0 spread, 16 = no output stores (wrong on purpose: the floor); variants taking turns call by
# call (KT_X_AB) in the matmul (16 and 1 threads) and the MoE (V3 / V2-Lite Q4_K, 512 tokens, two processes each).
set -uo pipefail
E=$OUT/h; mkdir -p $E; trap 'cd $OUT && tar czf h.tgz h && rm -rf h' EXIT
B=/tmp/kt; mkdir -p $B && tar xJf .device-carry/s19c3/bin.tar.xz -C $B
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s19c3/COMMIT)"
for f in q8_0 q4_K; do
  KT_X_AB=0,32,64,128,16 timeout 150 $B/kt-bench matmul --threads 16 --formats $f --shapes 7168x2048,2048x7168,1408x2048,18432x7168 --tokens 512 --seconds 0.3 >> $E/mm_t16.txt 2>&1
  log "threads 16 $f rc $?"
done
KT_X_AB=0,32,64,128,16 timeout 150 $B/kt-bench matmul --threads 1 --formats q4_K --shapes 7168x2048 --tokens 512 --seconds 0.3 >> $E/mm_t1.txt 2>&1
log "threads 1 rc $?"
for r in 1 2; do
  KT_X_AB=0,32,64,128 timeout 80 $B/kt-bench moe --shape deepseek-v3 --format q4_k --tokens 512 --threads 16 --seconds 4 --calls 8 --json > $E/v3_$r.json 2> $E/v3_$r.err
  log "v3 512 round $r rc $? $(grep x_variant $E/v3_$r.err | tr '\n' ' ')"
  KT_X_AB=0,32,64,128 timeout 60 $B/kt-bench moe --shape deepseek-v2-lite --format q4_k --tokens 512 --threads 16 --seconds 2 --calls 20 --json > $E/v2_$r.json 2> $E/v2_$r.err
  log "v2lite 512 round $r rc $? $(grep x_variant $E/v2_$r.err | tr '\n' ' ')"
done
log done
