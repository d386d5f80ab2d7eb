#!/usr/bin/env bash
# Session 33 call D: the final code. Every GPU test binary the session's changes reach, then on the
# V3 6-layer file llama.cpp's tg128 (the peer) and kt's decode: the shipped hybrid rules, the GPU-prefill
# rules as shipped (decode_resident on) and with --decode-resident off, and the int4 GPU-prefill rules
# both ways, processes taking turns.
set -uo pipefail
E=$OUT/d; mkdir -p $E; trap 'cd $OUT && tar czf d.tgz d && rm -rf d' EXIT
N=/tmp/kt-d; mkdir -p $N; tar xJf .device-carry/s33d/bin.tar.xz -C $N; xz -dc .device-carry/s27a/llamacpp-bench.xz > $N/llamacpp-bench; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s33d/COMMIT)"
export KT_REQUIRE_GPU=1
for t in cuda_moe_experts cuda_host_link hybrid_graph hybrid_prefill; do
  timeout 150 $N/$t --test-threads 2 --nocapture > $E/test_$t.log 2>&1; log "test $t rc $? $(grep -o 'test result.*' $E/test_$t.log)"
done
grep "RMS difference" $E/test_hybrid_graph.log | tee -a $E/summary.txt
unset KT_REQUIRE_GPU
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction_paired":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"resident_choice_share":[0-9.null]*\|"routed_bytes_per_token":[0-9.]*\|"samples":[^]]*'
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
dec hybrid deepseek-v3-hybrid.yaml
dec gp_on gpu-prefill/deepseek-v3-hybrid.yaml
dec gp_off gpu-prefill/deepseek-v3-hybrid.yaml --decode-resident off
dec gp4_on gpu-prefill/deepseek-v3-int4-hybrid.yaml
dec gp4_off gpu-prefill/deepseek-v3-int4-hybrid.yaml --decode-resident off
[ $((SECONDS-t0)) -lt 470 ] && dec gp_on2 gpu-prefill/deepseek-v3-hybrid.yaml
rm -f $G
log done
