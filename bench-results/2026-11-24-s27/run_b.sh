#!/usr/bin/env bash
# Session 27 call B (COMMIT: the GPU prefill's expert split): GPU tests of the split, then the DeepSeek-V3 shape,
# 4 layers (3 dense + 1 MoE): llama.cpp pp1024 and kt's GPU prefill (rules/gpu-prefill/deepseek-v3-hybrid.yaml)
# with --prefill-split off / auto / 0.3, separate processes.
set -uo pipefail
E=$OUT/b; mkdir -p $E; trap 'cd $OUT && tar czf b.tgz b && rm -rf b' EXIT
C=.device-carry/s27b; B=/tmp/kt-bin; mkdir -p $B && tar xJf $C/bin.tar.xz -C $B
xz -dc $C/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $C/COMMIT)"
for t in cuda_moe_experts hybrid_prefill kt_model; do
  KT_REQUIRE_GPU=1 timeout 150 $B/$t --nocapture > $E/test_$t.txt 2>&1; log "test $t rc $? $(grep 'test result' $E/test_$t.txt | tail -1)"
done
grep -h "split\|relative L2" $E/test_hybrid_prefill.txt | head -12
J='"gpu_load_s":[0-9.]*\|"prefill_tokens_per_s":[0-9.]*\|"split":[^,]*\|"cpu_s_per_pair":[0-9.e-]*\|"h2d[a-z_]*":[0-9.]*'
G=/tmp/v3_4.gguf
timeout 120 $B/kt-bench gen-gguf --preset deepseek-v3 --layers 4 --out $G --threads 16 > $E/gen_4.log 2>&1; log "gen rc $? $(tail -1 $E/gen_4.log)"
timeout 100 $B/llamacpp-bench -m $G -p 1024 -n 0 -t 16 -r 3 > $E/llama_4.out 2> $E/llama_4.err
log "llama 4 rc $? $(grep -o '"test":"[a-z0-9]*"\|"avg_ts":[0-9.]*' $E/llama_4.out | tr '\n' ' ')"
n=0
for sp in off auto 0.3 auto; do
  n=$((n+1)); [ $((SECONDS-t0)) -gt 520 ] && { log "skip $sp"; continue; }
  timeout 100 $B/kt-bench prefill --model $G --rules rules/gpu-prefill/deepseek-v3-hybrid.yaml --prompt-len 1024 \
    --threads 16 --json --prefill-split $sp > $E/pre_4_$n.out 2> $E/pre_4_$n.err
  log "prefill 4 split $sp rc $? $(grep -o "$J" $E/pre_4_$n.out | tr '\n' ' ')"
done
rm -f $G
log done
