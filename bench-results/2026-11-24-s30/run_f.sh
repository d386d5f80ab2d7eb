#!/usr/bin/env bash
# Session 30 call F: the final code (bd5c237) on the device: every GPU test binary of the
# changes, then the V3 6-layer decode against base (d8b0d44: kt-bench-x with no knob) with
# llama.cpp's tg128 on the same file, then V2-Lite likewise while time is left.
set -uo pipefail
E=$OUT/f; mkdir -p $E; trap "cd $OUT && tar czf f.tgz f && rm -rf f" EXIT
N=/tmp/kt-f; mkdir -p $N; tar xJf .device-carry/s30f/bin.tar.xz -C $N
chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s30f/COMMIT)"
export KT_REQUIRE_GPU=1
for t in cuda_linear cuda_mla cuda_host_link cuda_runtime cuda_w4a16 hybrid_graph hybrid_forward hybrid_pipeline hybrid_prefill; do
  timeout 150 $N/$t --test-threads 2 > $E/test_$t.log 2>&1; log "test $t rc $? $(grep -o 'test result.*' $E/test_$t.log)"
done
unset KT_REQUIRE_GPU
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"first_gpu_ms":[0-9.]*\|"routed_bandwidth_fraction":[0-9.]*'
dec() { # tag binary rules
  timeout 100 $N/$2 decode --model $G --rules rules/$3 --prompt-len 1024 --gen-len 128 \
    --threads 16 --json --repetitions 3 > $E/dec_$1.out 2> $E/dec_$1.err
  log "decode $1 rc $? $(grep -o "$J" $E/dec_$1.out | tr '\n' ' ')"
}
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_6.log 2>&1; log "gen 6 rc $? $(tail -1 $E/gen_6.log)"
for r in 1 2; do dec v3_base_$r kt-bench-x deepseek-v3-hybrid.yaml; dec v3_new_$r kt-bench deepseek-v3-hybrid.yaml; done
timeout 100 $N/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 3 > $E/llama_v3_6.out 2> $E/llama_v3_6.err
log "llama v3 6 rc $? $(grep -o '"test":"[a-z0-9]*"\|"avg_ts":[0-9.]*' $E/llama_v3_6.out | tr '\n' ' ')"
rm -f $G
[ $((SECONDS-t0)) -gt 480 ] && { log "skip v2l"; log done; exit 0; }
G=/tmp/v2l.gguf
timeout 60 $N/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen_v2l.log 2>&1; log "gen v2l rc $? $(tail -1 $E/gen_v2l.log)"
dec v2l_base_1 kt-bench-x deepseek-v2-lite-hybrid.yaml
[ $((SECONDS-t0)) -lt 540 ] && dec v2l_new_1 kt-bench deepseek-v2-lite-hybrid.yaml
rm -f $G
log done
