#!/usr/bin/env bash
# Session 34 call D (a fresh instance): expert deferral A/B on the V3 shape, paired runs.
# The synthetic V3 6-layer file (3 dense + 3 MoE); llama.cpp tg128 on it (the peer), then kt decode with the shipped
# hybrid rules (Q4_K CPU experts) --defer-experts 0 / 1 three times in turn, then the int4 CPU experts (rules/cpu-int4)
# and the int4 GPU-prefill rules (decode_resident), 0 / 1 each; llama.cpp tg128 again at the end.

set -uo pipefail
E=$OUT/d; mkdir -p $E; trap 'cd $OUT && tar czf d.tgz d && rm -rf d' EXIT
N=/tmp/kt-d; mkdir -p $N; tar xJf .device-carry/s34/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s34/COMMIT)"
KT_REQUIRE_GPU=1 timeout 120 $N/hybrid_graph --test-threads 2 --nocapture > $E/test_hybrid_graph.log 2>&1; log "test hybrid_graph rc $? $(grep -o 'test result.*' $E/test_hybrid_graph.log)"
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction_paired":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"deferred_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"moe_layer_bound_fraction_around":[0-9.]*\|"routed_bandwidth_fraction_around":[0-9.]*\|"samples":[^]]*'
dec() { # tag rules [extra args]
  local tag=$1 rules=$2; shift 2; local s0=$SECONDS
  timeout 150 $N/kt-bench decode --model $G --rules rules/$rules "$@" --prompt-len 1024 --gen-len 128 \
    --threads 16 --json --repetitions 3 > $E/dec_$tag.out 2> $E/dec_$tag.err
  log "decode $tag rc $? wall $((SECONDS-s0))s $(grep -o "$J" $E/dec_$tag.out | tr '\n' ' ')"
}
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_v3.log 2>&1; log "gen v3 rc $? $(tail -1 $E/gen_v3.log)"
timeout 100 $N/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 3 > $E/llama_v3.out 2> $E/llama_v3.err
log "llama v3 tg128 rc $? $(grep -o '"test":"[a-z0-9]*"\|"avg_ts":[0-9.]*\|"samples_s":[^]]*' $E/llama_v3.out | tr '\n' ' ')"
for r in 1 2 3; do
  dec h0_$r deepseek-v3-hybrid.yaml --defer-experts 0
  dec h1_$r deepseek-v3-hybrid.yaml --defer-experts 1
done
dec i0 cpu-int4/deepseek-v3-hybrid.yaml --defer-experts 0
dec i1 cpu-int4/deepseek-v3-hybrid.yaml --defer-experts 1
[ $((SECONDS-t0)) -lt 330 ] && dec g4d0 gpu-prefill/deepseek-v3-int4-hybrid.yaml --defer-experts 0
[ $((SECONDS-t0)) -lt 420 ] && dec g4d1 gpu-prefill/deepseek-v3-int4-hybrid.yaml --defer-experts 1
[ $((SECONDS-t0)) -lt 530 ] && { timeout 60 $N/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 3 > $E/llama_v3_end.out 2> $E/llama_v3_end.err
  log "llama v3 tg128 (end) rc $? $(grep -o '"avg_ts":[0-9.]*\|"samples_s":[^]]*' $E/llama_v3_end.out | tr '\n' ' ')"; }
rm -f $G
log done
