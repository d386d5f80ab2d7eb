#!/usr/bin/env bash
# Session 32 call C: the hybrid V3 and V2-Lite decodes with the read probes on one buffer (the
# change under test), llama.cpp tg128 on the same V3 file.
set -uo pipefail
E=$OUT/c; mkdir -p $E; trap 'cd $OUT && tar czf c.tgz c && rm -rf c' EXIT
N=/tmp/kt-c; mkdir -p $N; tar xJf .device-carry/s32b/bin.tar.xz -C $N; xz -dc .device-carry/s27a/llamacpp-bench.xz > $N/llamacpp-bench; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s32b/COMMIT)"
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"decode_bound_fraction_paired":[0-9.]*\|"dram_gbps":[0-9.]*\|"around_repetitions":[^]]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"routed_bandwidth_fraction":[0-9.]*\|"routed_bandwidth_fraction_around":[0-9.]*\|"samples":[^]]*\|"weights_s":[0-9.]*'
dec() { # tag rules
  local s0=$SECONDS
  timeout 120 $N/kt-bench decode --model $G --rules rules/$2 --prompt-len 1024 --gen-len 128 \
    --threads 16 --json --repetitions 3 > $E/dec_$1.out 2> $E/dec_$1.err
  log "decode $1 rc $? wall $((SECONDS-s0))s $(grep -o "$J" $E/dec_$1.out | tr '\n' ' ')"
}
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_6.log 2>&1; log "gen 6 rc $? $(tail -1 $E/gen_6.log)"
dec v3_1 deepseek-v3-hybrid.yaml
timeout 100 $N/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 3 > $E/llama_v3_6.out 2> $E/llama_v3_6.err
log "llama v3 6 rc $? $(grep -o '"test":"[a-z0-9]*"\|"avg_ts":[0-9.]*' $E/llama_v3_6.out | tr '\n' ' ')"
dec v3_2 deepseek-v3-hybrid.yaml
rm -f $G
[ $((SECONDS-t0)) -gt 450 ] && { log "skip v2l"; log done; exit 0; }
G=/tmp/v2l.gguf
timeout 60 $N/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen_v2l.log 2>&1; log "gen v2l rc $? $(tail -1 $E/gen_v2l.log)"
dec v2l_1 deepseek-v2-lite-hybrid.yaml
rm -f $G
log done
