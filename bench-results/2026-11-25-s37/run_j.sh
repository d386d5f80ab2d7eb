#!/usr/bin/env bash
# Session 37 call J: call G's A/B again on a fresh instance: the experiment build (x37b_order_ab.patch over
# f0ecab2) with KT_PREFETCH_AB=10:34,2 (34 = session 36's way: predicted experts walked ascending, the
# call's experts ascending; 2 = f0ecab2: the prediction's own order on both sides), V2-Lite then V3.
set -uo pipefail
J_=$OUT/j; mkdir -p $J_; trap 'cd $OUT && tar czf j.tgz j && rm -rf j' EXIT
N=/tmp/kt-j; mkdir -p $N; tar xJf .device-carry/s37j/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $J_/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s37j/COMMIT)"
dec() { # tag rules
  local s0=$SECONDS
  KT_PREFETCH_AB=10:34,2 timeout 200 $N/kt-bench-x37 decode --model $G --rules rules/$2 --prompt-len 1024 --gen-len 128 \
    --threads 16 --json --repetitions 1 > $J_/dec_$1.out 2> $J_/dec_$1.err
  log "decode $1 rc $? wall $((SECONDS-s0))s"
}
G=/tmp/v2l.gguf
timeout 120 $N/kt-bench-s37 gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $J_/gen_v2l.log 2>&1; log "gen v2l rc $? $(tail -1 $J_/gen_v2l.log)"
dec v2l_ab deepseek-v2-lite-hybrid.yaml
rm -f $G
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench-s37 gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $J_/gen_v3.log 2>&1; log "gen v3 rc $? $(tail -1 $J_/gen_v3.log)"
dec v3_ab deepseek-v3-hybrid.yaml
rm -f $G
