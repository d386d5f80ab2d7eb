#!/usr/bin/env bash
# Session 19 call G (x19c = main + knobs): the AMX GEMM's output stores. X_KNOB: 1/2/4 skip the products / scaling /
# unpacking, 8 = non-temporal stores of whole 16-row output lines, 16 = no output stores (results wrong on purpose
# for all but 0 and 8); variants taking turns call by call (KT_X_AB), 16 and 1 threads, 512 tokens.
set -uo pipefail
E=$OUT/g; mkdir -p $E; trap 'cd $OUT && tar czf g.tgz g && rm -rf g' EXIT
B=/tmp/kt; mkdir -p $B && tar xJf .device-carry/s19c2/bin.tar.xz -C $B
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s19c2/COMMIT)"
for th in 16 1; do
  for f in q8_0 q4_K; do
    KT_X_AB=0,8,16,7,15,23 timeout 150 $B/kt-bench matmul --threads $th --formats $f --shapes 2048x7168,7168x2048 --tokens 512 --seconds 0.3 >> $E/mm_t$th.txt 2>&1
    log "threads $th $f rc $?"
  done
done
log done
