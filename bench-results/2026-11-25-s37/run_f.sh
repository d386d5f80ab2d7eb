#!/usr/bin/env bash
# Session 37 call F: the A/B of call E with more rounds on a fresh instance: the experiment build
# (x37_order_ab.patch over 2128703) with KT_PREFETCH_AB=10:off,34,2 (off; 34 = 2 rounds without the
# prediction's order; 2 = with it), V3 6-layer file and V2-Lite, shipped hybrid rules.
set -uo pipefail
F=$OUT/f; mkdir -p $F; trap 'cd $OUT && tar czf f.tgz f && rm -rf f' EXIT
N=/tmp/kt-f; mkdir -p $N; tar xJf .device-carry/s37e/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $F/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s37e/COMMIT)"
timeout 60 $N/kt-bench-s37 machine --threads 16 --json > $F/machine.json 2> $F/machine.err; log "machine rc $?"
dec() { # tag rules ab
  local s0=$SECONDS
  KT_PREFETCH_AB=$3 timeout 250 $N/kt-bench-x37 decode --model $G --rules rules/$2 --prompt-len 1024 --gen-len 128 \
    --threads 16 --json --repetitions 1 > $F/dec_$1.out 2> $F/dec_$1.err
  log "decode $1 rc $? wall $((SECONDS-s0))s"
}
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench-s37 gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $F/gen_v3.log 2>&1; log "gen v3 rc $? $(tail -1 $F/gen_v3.log)"
dec v3_ab deepseek-v3-hybrid.yaml 10:off,34,2
rm -f $G
G=/tmp/v2l.gguf
timeout 120 $N/kt-bench-s37 gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $F/gen_v2l.log 2>&1; log "gen v2l rc $? $(tail -1 $F/gen_v2l.log)"
dec v2l_ab deepseek-v2-lite-hybrid.yaml 10:off,34,2
rm -f $G
