#!/usr/bin/env bash
# Session 23 call I (call H again with room for 256-row items in the repacked path, x23i2): 256-row decode items (knob 3: GEMV_ROW_BLOCK 256, still halved while a phase has fewer than 64
# items, so V2-Lite keeps main's 128-row plan and serves as the A/A control) against main (0), in one process, with
# the fixed turn-taking schedule (every variant meets every layer copy). s23xi2 = main e6473a9 + x23i.
set -uo pipefail
E=$OUT/i; mkdir -p $E; trap "cd $OUT && tar czf i.tgz i && rm -rf i" EXIT
X=/tmp/ktx; mkdir -p $X && tar xJf .device-carry/s23xi2/bin.tar.xz -C $X
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s23xi2/COMMIT); $(nproc) cpus"
for r in 1 2 3; do
  KT_X_AB=0,3 timeout 60 $X/kt-bench moe --shape deepseek-v3 --format q4_k --tokens 1 --threads 16 --seconds 3 > $E/v3_q4k_$r.txt 2>&1
  log "v3 q4_k $r rc $? $(grep x_variant $E/v3_q4k_$r.txt | tr '\n' ' ')"
  KT_X_AB=0,3 timeout 60 $X/kt-bench moe --shape deepseek-v3 --format int4 --group 128 --prefetch 2:l1,2:l1 --tokens 1 --threads 16 --seconds 3 > $E/v3_int4_$r.txt 2>&1
  log "v3 int4 $r rc $? $(grep -o '[0-9.]* ms/call' $E/v3_int4_$r.txt | tr '\n' ' ')"
  KT_X_AB=0,3 timeout 60 $X/kt-bench moe --shape deepseek-v2-lite --format q4_k --tokens 1 --threads 16 --seconds 3 > $E/v2l_q4k_$r.txt 2>&1
  log "v2l q4_k (A/A) $r rc $? $(grep x_variant $E/v2l_q4k_$r.txt | tr '\n' ' ')"
done
KT_X_AB=0,3 timeout 60 $X/kt-bench moe --shape deepseek-v3 --format q4_k --tokens 4 --threads 16 --seconds 3 > $E/v3_q4k_t4.txt 2>&1
log "v3 q4_k t4 rc $? $(grep x_variant $E/v3_q4k_t4.txt | tr '\n' ' ')"
KT_X_AB=0,3 timeout 60 $X/kt-bench moe --shape deepseek-v2-lite --format int4 --group 128 --prefetch 2:l1,2:l1 --tokens 1 --threads 16 --seconds 3 > $E/v2l_int4.txt 2>&1
log "v2l int4 (A/A) rc $? $(grep -o '[0-9.]* ms/call' $E/v2l_int4.txt | tr '\n' ' ')"
log done
