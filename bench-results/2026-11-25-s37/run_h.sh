#!/usr/bin/env bash
# Session 37 call H: the decode prefetch as demand loads (a plain read into L1/L2) instead of L2 prefetch
# hints, in-process: the experiment build (x37c_touch_ab.patch over f0ecab2) with KT_PREFETCH_AB=10:34,2
# (34 = 2 rounds with demand loads, 2 = the shipped hints). Then the final build's decode (3 repetitions)
# on both files.
set -uo pipefail
H=$OUT/h; mkdir -p $H; trap 'cd $OUT && tar czf h.tgz h && rm -rf h' EXIT
N=/tmp/kt-h; mkdir -p $N; tar xJf .device-carry/s37h/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $H/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s37h/COMMIT)"
timeout 60 $N/kt-bench-s37 machine --threads 16 --json > $H/machine.json 2> $H/machine.err; log "machine rc $?"
J='"decode_tokens_per_s":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"moe_layer_bound_fraction_around":[0-9.]*\|"routed_bandwidth_fraction_around":[0-9.]*\|"predicted_hit_rate":[0-9.]*\|"prefetch_mb":[0-9.]*'
dec() { # tag binary rules reps [env]
  local s0=$SECONDS
  env ${5:-} timeout 250 $N/$2 decode --model $G --rules rules/$3 --prompt-len 1024 --gen-len 128 \
    --threads 16 --json --repetitions $4 > $H/dec_$1.out 2> $H/dec_$1.err
  log "decode $1 rc $? wall $((SECONDS-s0))s $(grep -o "$J" $H/dec_$1.out | head -7 | tr '\n' ' ')"
}
G=/tmp/v2l.gguf
timeout 120 $N/kt-bench-s37 gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $H/gen_v2l.log 2>&1; log "gen v2l rc $? $(tail -1 $H/gen_v2l.log)"
dec v2l_ab kt-bench-x37c deepseek-v2-lite-hybrid.yaml 1 KT_PREFETCH_AB=10:34,2
dec v2l_a kt-bench-s37 deepseek-v2-lite-hybrid.yaml 3
rm -f $G
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench-s37 gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $H/gen_v3.log 2>&1; log "gen v3 rc $? $(tail -1 $H/gen_v3.log)"
dec v3_ab kt-bench-x37c deepseek-v3-hybrid.yaml 1 KT_PREFETCH_AB=10:34,2
dec v3_a kt-bench-s37 deepseek-v3-hybrid.yaml 3
rm -f $G
