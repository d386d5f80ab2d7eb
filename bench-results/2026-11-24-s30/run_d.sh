#!/usr/bin/env bash
# Session 30 call D: where the routed experts' weights lie, the hybrid V3 6-layer decode on the
# in-memory synthetic preset (anonymous memory) against the same model as a GGUF file (mmap),
# processes in turn; binary = 0aa7c85 (call A's kt-bench).
set -uo pipefail
E=$OUT/d; mkdir -p $E; trap "cd $OUT && tar czf d.tgz d && rm -rf d" EXIT
N=/tmp/kt-d; mkdir -p $N; tar xJf .device-carry/s30a/bin.tar.xz -C $N ./kt-bench; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1)"
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"experts_per_layer_gbps":[^]]*\]\|"experts_per_layer_ms":[^]]*\]\|"gpu_between_moe_ms":[0-9.]*\|"routed_bandwidth_fraction":[0-9.]*\|"experts_quantiles_ms":[^]]*\]\|"model":"[^"]*"'
dec() { # tag model
  timeout 110 $N/kt-bench decode --model $2 --rules rules/deepseek-v3-hybrid.yaml --prompt-len 1024 --gen-len 128 \
    --threads 16 --json --repetitions 3 > $E/dec_$1.out 2> $E/dec_$1.err
  log "decode $1 rc $? $(grep -o "$J" $E/dec_$1.out | tr '\n' ' ')"
}
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_6.log 2>&1; log "gen 6 rc $? $(tail -1 $E/gen_6.log)"
for r in 1 2; do dec anon_$r "deepseek-v3 --layers 6"; dec file_$r $G; done
rm -f $G
log done
