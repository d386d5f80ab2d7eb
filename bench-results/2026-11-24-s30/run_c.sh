#!/usr/bin/env bash
# Session 30 call C: the predicted-expert prefetch over the stretch read as 1 / 4 / 8 interleaved
# streams per item part (KT_X = 0 / 14 / 18; kt-bench-x = d8b0d44 + x30 knobs), processes in turn,
# V3 6-layer and V2-Lite decodes.
set -uo pipefail
E=$OUT/c; mkdir -p $E; trap "cd $OUT && tar czf c.tgz c && rm -rf c" EXIT
N=/tmp/kt-c; mkdir -p $N; xz -dc .device-carry/s30c/kt-bench-x.xz > $N/kt-bench-x; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1)"
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"experts_per_layer_ms":[^]]*\]\|"gpu_between_moe_ms":[0-9.]*\|"routed_bandwidth_fraction":[0-9.]*\|"prefetch_mb":[0-9.]*\|"prefetch_us":[0-9.]*\|"predicted_hit_rate":[0-9.]*'
dec() { # tag knob rules
  KT_X=$2 timeout 100 $N/kt-bench-x decode --model $G --rules rules/$3 --prompt-len 1024 --gen-len 128 \
    --threads 16 --json --repetitions 3 > $E/dec_$1.out 2> $E/dec_$1.err
  log "decode $1 rc $? $(grep -o "$J" $E/dec_$1.out | tr '\n' ' ')"
}
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench-x gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_6.log 2>&1; log "gen 6 rc $? $(tail -1 $E/gen_6.log)"
for r in 1 2; do for k in 0 14 18; do dec v3_k${k}_$r $k deepseek-v3-hybrid.yaml; done; done
rm -f $G
G=/tmp/v2l.gguf
timeout 120 $N/kt-bench-x gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen_v2l.log 2>&1; log "gen v2l rc $? $(tail -1 $E/gen_v2l.log)"
for r in 1; do for k in 0 14; do
  [ $((SECONDS-t0)) -gt 520 ] && { log "skip v2l $k $r"; continue; }
  dec v2l_k${k}_$r $k deepseek-v2-lite-hybrid.yaml; done; done
rm -f $G
log done
