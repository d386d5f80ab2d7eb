#!/usr/bin/env bash
# Session 28 call I (the binaries of call H): V2-Lite (27 layers, synthetic Q4_K_M-like GGUF) after the copy-wait fix:
# llama.cpp pp1024 beside kt's GPU prefill with rules/gpu-prefill/deepseek-v2-lite-hybrid.yaml as shipped (nothing
# resident, no split) and with all 64 experts of each layer resident (`--prefill-resident 64`: V2-Lite's int4 experts
# fit an 80 GB GPU whole, `kt-bench plan` finds room for all), separate processes.
set -uo pipefail
E=$OUT/i; mkdir -p $E; trap "cd $OUT && tar czf i.tgz i && rm -rf i" EXIT
C=.device-carry/s28h; B=/tmp/kt-bin; mkdir -p $B && tar xJf $C/bin.tar.xz -C $B
xz -dc $C/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $C/COMMIT | tr '\n' ' ')"
G=/tmp/v2l.gguf
timeout 120 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $? $(tail -1 $E/gen.log)"
timeout 100 $B/llamacpp-bench -m $G -p 1024 -n 0 -t 16 -r 3 > $E/llama.out 2> $E/llama.err
log "llama rc $? $(grep -o '"test":"[a-z0-9]*"\|"avg_ts":[0-9.]*' $E/llama.out | tr '\n' ' ')"
J='"prefill_tokens_per_s":[0-9.]*\|"split":[^,{]*\|"resident_experts":[0-9]*\|"threshold":[0-9]*'
timeout 150 $B/kt-bench prefill --model $G --rules rules/gpu-prefill/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 \
  --threads 16 --json > $E/pre_a.out 2> $E/pre_a.err; log "prefill shipped rc $? $(grep -o "$J" $E/pre_a.out | tr '\n' ' ')"
timeout 150 $B/kt-bench prefill --model $G --rules rules/gpu-prefill/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 \
  --threads 16 --json --prefill-resident 64 > $E/pre_b.out 2> $E/pre_b.err; log "prefill resident 64 rc $? $(grep -o "$J" $E/pre_b.out | tr '\n' ' ')"
rm -f $G
log done
