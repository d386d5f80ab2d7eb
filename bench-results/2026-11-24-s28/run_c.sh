#!/usr/bin/env bash
# Session 28 call C (the binaries of call B): the V3
# shape at 4 layers (3 dense + 1 MoE) and 6 (3 dense + 3 MoE): llama.cpp pp1024 and kt's GPU prefill with 43
# resident experts per MoE layer (43: what `kt-bench plan` finds room for beside the real 61-layer V3 in 78 GiB)
# and CPU shares of 0.15 and 0.2 (the split), separate processes.
set -uo pipefail
E=$OUT/c; mkdir -p $E; trap "cd $OUT && tar czf c.tgz c && rm -rf c" EXIT
C=.device-carry/s28b; B=/tmp/kt-bin; mkdir -p $B && tar xJf $C/bin.tar.xz -C $B
xz -dc $C/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $C/COMMIT | tr '\n' ' ')"
J='"operator_s":[0-9.]*\|"prefill_tokens_per_s":[0-9.]*\|"split":[^,{]*\|"resident_experts":[0-9]*\|"copy_ms":[0-9.]*\|"copy_gbps":[0-9.]*\|"compute_ms":[0-9.]*'
pre() { # layers tag split resident
  [ $((SECONDS-t0)) -gt 480 ] && { log "skip $1 $2"; return; }
  timeout 130 $B/kt-bench prefill --model /tmp/v3_$1.gguf --rules rules/gpu-prefill/deepseek-v3-hybrid.yaml --prompt-len 1024 \
    --threads 16 --json --prefill-split $3 --prefill-resident $4 > $E/pre_$1_$2.out 2> $E/pre_$1_$2.err
  log "prefill $1 split $3 resident $4 rc $? $(grep -o "$J" $E/pre_$1_$2.out | tr '\n' ' ')"
}
llama() { # layers
  timeout 100 $B/llamacpp-bench -m /tmp/v3_$1.gguf -p 1024 -n 0 -t 16 -r 3 > $E/llama_$1.out 2> $E/llama_$1.err
  log "llama $1 rc $? $(grep -o '"test":"[a-z0-9]*"\|"avg_ts":[0-9.]*' $E/llama_$1.out | tr '\n' ' ')"
}
timeout 120 $B/kt-bench gen-gguf --preset deepseek-v3 --layers 4 --out /tmp/v3_4.gguf --threads 16 > $E/gen_4.log 2>&1; log "gen rc $? $(tail -1 $E/gen_4.log)"
llama 4; pre 4 a 0.15 43; pre 4 b 0.2 43
rm -f /tmp/v3_4.gguf
timeout 120 $B/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out /tmp/v3_6.gguf --threads 16 > $E/gen_6.log 2>&1; log "gen rc $? $(tail -1 $E/gen_6.log)"
llama 6; pre 6 a 0.15 43; pre 6 b 0.2 43
rm -f /tmp/v3_6.gguf
log done
