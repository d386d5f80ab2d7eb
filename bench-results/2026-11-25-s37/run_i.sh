#!/usr/bin/env bash
# Session 37 call I: the final code (f0ecab2) once more: the hybrid decode (3 repetitions) twice on each
# file, processes in turn, and the V3 one-token layer with --ceiling.
set -uo pipefail
I=$OUT/i; mkdir -p $I; trap 'cd $OUT && tar czf i.tgz i && rm -rf i' EXIT
N=/tmp/kt-i; mkdir -p $N; tar xJf .device-carry/s37h/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $I/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s37h/COMMIT)"
timeout 60 $N/kt-bench-s37 machine --threads 16 --json > $I/machine.json 2> $I/machine.err; log "machine rc $?"
J='"decode_tokens_per_s":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"moe_layer_bound_fraction_around":[0-9.]*\|"routed_bandwidth_fraction_around":[0-9.]*'
dec() { # tag rules
  local s0=$SECONDS
  timeout 150 $N/kt-bench-s37 decode --model $G --rules rules/$2 --prompt-len 1024 --gen-len 128 \
    --threads 16 --json --repetitions 3 > $I/dec_$1.out 2> $I/dec_$1.err
  log "decode $1 rc $? wall $((SECONDS-s0))s $(grep -o "$J" $I/dec_$1.out | head -5 | tr '\n' ' ')"
}
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench-s37 gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $I/gen_v3.log 2>&1; log "gen v3 rc $? $(tail -1 $I/gen_v3.log)"
dec v3_a deepseek-v3-hybrid.yaml
dec v3_b deepseek-v3-hybrid.yaml
rm -f $G
G=/tmp/v2l.gguf
timeout 120 $N/kt-bench-s37 gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $I/gen_v2l.log 2>&1; log "gen v2l rc $? $(tail -1 $I/gen_v2l.log)"
dec v2l_a deepseek-v2-lite-hybrid.yaml
dec v2l_b deepseek-v2-lite-hybrid.yaml
rm -f $G
[ $((SECONDS-t0)) -lt 420 ] && {
  timeout $((585-(SECONDS-t0))) $N/kt-bench-s37 moe --shape deepseek-v3 --format q4_k --tokens 1 --threads 16 --seconds 8 --ceiling --json > $I/moe_v3.jsonl 2> $I/moe_v3.err
  log "moe v3 rc $?"
}
