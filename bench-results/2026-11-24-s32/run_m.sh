#!/usr/bin/env bash
# Session 32 call M: the final code (after the review) on the device: every GPU test binary the
# session's changes reach, then the V3 hybrid decode and the V3 GPU prefill (load times with them).
set -uo pipefail
E=$OUT/m; mkdir -p $E; trap 'cd $OUT && tar czf m.tgz m && rm -rf m' EXIT
N=/tmp/kt-m; mkdir -p $N; tar xJf .device-carry/s32m/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s32m/COMMIT)"
export KT_REQUIRE_GPU=1
for t in cuda_w4a16 cuda_moe_experts cuda_pinned cuda_runtime cuda_host_link hybrid_prefill hybrid_pipeline hybrid_graph hybrid_forward; do
  timeout 150 $N/$t --test-threads 2 > $E/test_$t.log 2>&1; log "test $t rc $? $(grep -o 'test result.*' $E/test_$t.log)"
done
unset KT_REQUIRE_GPU
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_6.log 2>&1; log "gen 6 rc $? $(tail -1 $E/gen_6.log)"
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction_paired":[0-9.]*\|"gpu_load_s":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*'
timeout 120 $N/kt-bench decode --model $G --rules rules/deepseek-v3-hybrid.yaml --prompt-len 1024 --gen-len 128 \
  --threads 16 --json --repetitions 3 > $E/dec_v3.out 2> $E/dec_v3.err
log "decode v3 rc $? $(grep -o "$J" $E/dec_v3.out | tr '\n' ' ')"
P='"prefill_tokens_per_s":[0-9.]*\|"gpu_load_s":[0-9.]*\|"pin_s":[0-9.]*\|"repack_s":[0-9.]*'
timeout 150 $N/kt-bench prefill --model $G --rules rules/gpu-prefill/deepseek-v3-hybrid.yaml --prompt-len 1024 \
  --threads 16 --json > $E/pre_v3.out 2> $E/pre_v3.err
log "prefill v3 gpu-prefill rc $? $(grep -o "$P" $E/pre_v3.out | tr '\n' ' ')"
rm -f $G
log done
