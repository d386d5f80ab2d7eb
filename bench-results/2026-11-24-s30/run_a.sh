#!/usr/bin/env bash
# Session 30 call A: (1) the x30 knob (one-token GEMV streams / prefetch) in one process each,
# V3 and V2-Lite Q4_K MoE; (2) the GPU change (q_a + kv_a stacked, rope query chunks) against
# base (kt-bench-x with no knob = d8b0d44) in the V3 6-layer decode; (3) its tests.
set -uo pipefail
E=$OUT/a; mkdir -p $E; trap "cd $OUT && tar czf a.tgz a && rm -rf a" EXIT
N=/tmp/kt-a; mkdir -p $N; tar xJf .device-carry/s30a/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s30a/COMMIT)"
moe() { # tag shape seconds
  KT_X_AB=0,1,2,3,4,5 timeout 150 $N/kt-bench-x moe --shape $2 --format q4_k --tokens 1 --threads 16 --seconds $3 --json > $E/moe_$1.out 2> $E/moe_$1.err
  log "moe $1 rc $? $(grep -o '"dram_gbps":[0-9.]*' $E/moe_$1.out | head -1) $(grep -E 'x_variant' $E/moe_$1.err | awk '{printf "%s=%s ", $2, $4}') $(grep -c 'bit_identical true' $E/moe_$1.err) same"
}
moe v3_1 deepseek-v3 5
moe v2l_1 deepseek-v2-lite 3
moe v3_2 deepseek-v3 5
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"first_gpu_ms":[0-9.]*\|"routed_bandwidth_fraction":[0-9.]*\|"prefetch_mb":[0-9.]*'
dec() { # tag binary
  timeout 110 $N/$2 decode --model $G --rules rules/deepseek-v3-hybrid.yaml --prompt-len 1024 --gen-len 128 \
    --threads 16 --json --repetitions 3 > $E/dec_$1.out 2> $E/dec_$1.err
  log "decode $1 rc $? $(grep -o "$J" $E/dec_$1.out | tr '\n' ' ')"
}
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_6.log 2>&1; log "gen 6 rc $? $(tail -1 $E/gen_6.log)"
for r in 1 2; do dec base_$r kt-bench-x; dec new_$r kt-bench; done
rm -f $G
export KT_REQUIRE_GPU=1
for t in cuda_linear hybrid_graph hybrid_forward; do
  [ $((SECONDS-t0)) -gt 500 ] && { log "skip $t"; continue; }
  timeout 150 $N/$t --test-threads 2 > $E/test_$t.log 2>&1; log "test $t rc $? $(grep -o 'test result.*' $E/test_$t.log)"
done
log done
