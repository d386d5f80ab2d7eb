#!/usr/bin/env bash
# Session 27 call F (COMMIT: the split off by default, fixed shares): the GPU prefill test, then the V3 shape, 6 layers
# (3 dense + 3 MoE): llama.cpp pp1024 and kt's GPU prefill with --prefill-split off / 0.1 / 0.05 / off / 0.1, separate
# processes.
set -uo pipefail
E=$OUT/f; mkdir -p $E; trap "cd $OUT && tar czf f.tgz f && rm -rf f" EXIT
C=.device-carry/s27f; B=/tmp/kt-bin; mkdir -p $B && tar xJf $C/bin.tar.xz -C $B
xz -dc $C/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $C/COMMIT | tr '\n' ' ')"
J='"prefill_tokens_per_s":[0-9.]*\|"split":[^,]*\|"cpu_s_per_pair":[0-9.e-]*\|"cpu_shares":\[[^]]*\]'
pre() { # layers tag split
  [ $((SECONDS-t0)) -gt 490 ] && { log "skip $1 $3"; return; }
  timeout 130 $B/kt-bench prefill --model /tmp/v3_$1.gguf --rules rules/gpu-prefill/deepseek-v3-hybrid.yaml --prompt-len 1024 \
    --threads 16 --json --prefill-split $3 > $E/pre_$1_$2.out 2> $E/pre_$1_$2.err
  log "prefill $1 split $3 rc $? $(grep -o "$J" $E/pre_$1_$2.out | tr '\n' ' ')"
}
KT_REQUIRE_GPU=1 timeout 100 $B/hybrid_prefill --nocapture > $E/test_hybrid_prefill.txt 2>&1; log "test hybrid_prefill rc $? $(grep 'test result' $E/test_hybrid_prefill.txt | tail -1)"
timeout 120 $B/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out /tmp/v3_6.gguf --threads 16 > $E/gen_6.log 2>&1; log "gen rc $? $(tail -1 $E/gen_6.log)"
timeout 100 $B/llamacpp-bench -m /tmp/v3_6.gguf -p 1024 -n 0 -t 16 -r 3 > $E/llama_6.out 2> $E/llama_6.err
log "llama 6 rc $? $(grep -o '"test":"[a-z0-9]*"\|"avg_ts":[0-9.]*' $E/llama_6.out | tr '\n' ' ')"
pre 6 a off; pre 6 b 0.1; pre 6 c 0.05; pre 6 d off; pre 6 e 0.1
rm -f /tmp/v3_6.gguf
log done
