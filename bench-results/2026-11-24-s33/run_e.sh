#!/usr/bin/env bash
# Session 33 call E: one MoE layer's bound fraction (new in kt-bench's JSON) for the V3 and V2-Lite hybrid
# decodes with Q4_K and int4 CPU experts, processes taking turns; the standalone one-token MoE layer of each
# beside them; hybrid_forward (the GPU linears' int4 quantization now in kt-kernels).
set -uo pipefail
E=$OUT/e; mkdir -p $E; trap 'cd $OUT && tar czf e.tgz e && rm -rf e' EXIT
N=/tmp/kt-e; mkdir -p $N; tar xJf .device-carry/s33e/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s33e/COMMIT)"
KT_REQUIRE_GPU=1 timeout 150 $N/hybrid_forward --test-threads 2 > $E/test_hybrid_forward.log 2>&1; log "test hybrid_forward rc $? $(grep -o 'test result.*' $E/test_hybrid_forward.log)"
J='"decode_tokens_per_s":[0-9.]*\|"moe_layer_bound_fraction_around":[0-9.]*\|"routed_bandwidth_fraction_around":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"gpu_load_s":[0-9.]*'
dec() { # tag rules
  local s0=$SECONDS
  timeout 150 $N/kt-bench decode --model $G --rules rules/$2 --prompt-len 1024 --gen-len 128 \
    --threads 16 --json --repetitions 3 > $E/dec_$1.out 2> $E/dec_$1.err
  log "decode $1 rc $? wall $((SECONDS-s0))s $(grep -o "$J" $E/dec_$1.out | tr '\n' ' ')"
}
M='"ms_per_call":[0-9.]*\|"bandwidth_fraction_paired":[0-9.]*\|"weight_gbps":[0-9.]*'
moe() { # tag shape format
  timeout 100 $N/kt-bench moe --shape $2 --format $3 --tokens 1 --threads 16 --routing fresh --json > $E/moe_$1.out 2> $E/moe_$1.err
  log "moe $1 rc $? $(grep -o "$M" $E/moe_$1.out | tr '\n' ' ')"
}
moe v3_q4k deepseek-v3 q4_k
moe v3_int4 deepseek-v3 int4
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_v3.log 2>&1; log "gen v3 rc $? $(tail -1 $E/gen_v3.log)"
dec v3_q4k_1 deepseek-v3-hybrid.yaml
dec v3_int4_1 cpu-int4/deepseek-v3-hybrid.yaml
dec v3_q4k_2 deepseek-v3-hybrid.yaml
dec v3_int4_2 cpu-int4/deepseek-v3-hybrid.yaml
rm -f $G
[ $((SECONDS-t0)) -gt 430 ] && { log "skip v2l"; log done; exit 0; }
G=/tmp/v2l.gguf
timeout 60 $N/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen_v2l.log 2>&1; log "gen v2l rc $? $(tail -1 $E/gen_v2l.log)"
dec v2l_q4k deepseek-v2-lite-hybrid.yaml
dec v2l_int4 cpu-int4/deepseek-v2-lite-hybrid.yaml
rm -f $G
log done
