#!/usr/bin/env bash
# Session 30 call E: the next layer's attention weights prefetched into the GPU's L2 while the
# CPU computes a MoE layer's experts (KT_X_L2MB = 0 / 24 / 40 MB; build = 0aa7c85 + the prefetch
# with the experiment's env budget), processes in turn, V3 6-layer and V2-Lite decodes.
set -uo pipefail
E=$OUT/e; mkdir -p $E; trap "cd $OUT && tar czf e.tgz e && rm -rf e" EXIT
N=/tmp/kt-e; mkdir -p $N; xz -dc .device-carry/s30e/kt-bench.xz > $N/kt-bench; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1)"
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"first_gpu_ms":[0-9.]*\|"tail_ms":[0-9.]*\|"routed_bandwidth_fraction":[0-9.]*'
dec() { # tag MB rules
  KT_X_L2MB=$2 timeout 100 $N/kt-bench decode --model $G --rules rules/$3 --prompt-len 1024 --gen-len 128 \
    --threads 16 --json --repetitions 3 > $E/dec_$1.out 2> $E/dec_$1.err
  log "decode $1 rc $? $(grep -o "$J" $E/dec_$1.out | tr '\n' ' ')"
}
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_6.log 2>&1; log "gen 6 rc $? $(tail -1 $E/gen_6.log)"
for r in 1 2; do for m in 0 24 40; do dec v3_m${m}_$r $m deepseek-v3-hybrid.yaml; done; done
rm -f $G
G=/tmp/v2l.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen_v2l.log 2>&1; log "gen v2l rc $? $(tail -1 $E/gen_v2l.log)"
for m in 0 24; do
  [ $((SECONDS-t0)) -gt 500 ] && { log "skip v2l $m"; continue; }
  dec v2l_m${m} $m deepseek-v2-lite-hybrid.yaml; done
rm -f $G
log done
