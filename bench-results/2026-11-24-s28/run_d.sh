#!/usr/bin/env bash
# Session 28 call D (COMMIT: the review's changes): the device tests of the GPU prefill on the final code, and one V3
# 4-layer GPU prefill with 43 resident experts and a CPU share of 0.15 to check the JSON's per-layer timeline.
set -uo pipefail
E=$OUT/d; mkdir -p $E; trap "cd $OUT && tar czf d.tgz d && rm -rf d" EXIT
C=.device-carry/s28d; B=/tmp/kt-bin; mkdir -p $B && tar xJf $C/bin.tar.xz -C $B; chmod +x $B/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $C/COMMIT | tr '\n' ' ')"
for t in cuda_pinned cuda_moe_experts hybrid_prefill hybrid_forward; do
  KT_REQUIRE_GPU=1 timeout 150 $B/$t > $E/test_$t.txt 2>&1; log "test $t rc $? $(grep 'test result' $E/test_$t.txt | tail -1)"
done
timeout 120 $B/kt-bench gen-gguf --preset deepseek-v3 --layers 4 --out /tmp/v3_4.gguf --threads 16 > $E/gen_4.log 2>&1; log "gen rc $? $(tail -1 $E/gen_4.log)"
timeout 130 $B/kt-bench prefill --model /tmp/v3_4.gguf --rules rules/gpu-prefill/deepseek-v3-hybrid.yaml --prompt-len 1024 \
  --threads 16 --json --prefill-split 0.15 --prefill-resident 43 > $E/pre_4.out 2> $E/pre_4.err
log "prefill 4 rc $? $(grep -o '"prefill_tokens_per_s":[0-9.]*\|"layers":\[[^]]*\]' $E/pre_4.out | tr '\n' ' ')"
rm -f /tmp/v3_4.gguf
log done
