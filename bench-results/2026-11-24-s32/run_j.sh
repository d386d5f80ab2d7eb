#!/usr/bin/env bash
# Session 32 call J: the vectorized int4 quantization (HEAD) against d9bec5e: the GPU tests
# whose weights it makes, the repack's steps per weight (example int4_repack_rate, 1 and 16
# threads), and the load time with the GPU-prefill rules (every expert repacked), in turn.
set -uo pipefail
E=$OUT/j; mkdir -p $E; trap 'cd $OUT && tar czf j.tgz j && rm -rf j' EXIT
N=/tmp/kt-j; mkdir -p $N; tar xJf .device-carry/s32j/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s32j/COMMIT)"
export KT_REQUIRE_GPU=1
for t in cuda_w4a16 cuda_moe_experts hybrid_prefill hybrid_graph hybrid_forward; do
  timeout 150 $N/$t --test-threads 2 > $E/test_$t.log 2>&1; log "test $t rc $? $(grep -o 'test result.*' $E/test_$t.log)"
done
unset KT_REQUIRE_GPU
for t in 1 16 1; do log "$($N/int4_repack_rate $t)"; done
J='"gpu_load_s":[0-9.]*\|"decode_tokens_per_s":[0-9.]*'
dec() { # tag binary rules
  local s0=$SECONDS
  timeout 150 $N/$2 decode --model $G --rules rules/$3 --prompt-len 64 --gen-len 4 \
    --threads 16 --json --repetitions 1 > $E/dec_$1.out 2> $E/dec_$1.err
  log "decode $1 rc $? wall $((SECONDS-s0))s $(grep -o "$J" $E/dec_$1.out | tr '\n' ' ')"
}
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_6.log 2>&1; log "gen 6 rc $? $(tail -1 $E/gen_6.log)"
for r in 1 2; do
  dec v3_pf_new_$r kt-bench gpu-prefill/deepseek-v3-hybrid.yaml
  dec v3_pf_d9bec5e_$r kt-bench-d9bec5e gpu-prefill/deepseek-v3-hybrid.yaml
done
dec v3_new kt-bench deepseek-v3-hybrid.yaml
dec v3_d9bec5e kt-bench-d9bec5e deepseek-v3-hybrid.yaml
rm -f $G
[ $((SECONDS-t0)) -gt 450 ] && { log "skip v2l"; log done; exit 0; }
G=/tmp/v2l.gguf
timeout 60 $N/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen_v2l.log 2>&1; log "gen v2l rc $? $(tail -1 $E/gen_v2l.log)"
dec v2l_pf_new kt-bench gpu-prefill/deepseek-v2-lite-hybrid.yaml
dec v2l_pf_d9bec5e kt-bench-d9bec5e gpu-prefill/deepseek-v2-lite-hybrid.yaml
rm -f $G
log done
