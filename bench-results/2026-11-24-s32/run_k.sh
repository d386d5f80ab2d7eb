#!/usr/bin/env bash
# Session 32 call K: pinned buffers zeroed on all cores (HEAD) against 5082797: cuda_pinned,
# then the load time with the GPU-prefill rules (pin_s, repack_s), in turn.
set -uo pipefail
E=$OUT/k; mkdir -p $E; trap 'cd $OUT && tar czf k.tgz k && rm -rf k' EXIT
N=/tmp/kt-k; mkdir -p $N; tar xJf .device-carry/s32k/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s32k/COMMIT)"
export KT_REQUIRE_GPU=1
for t in cuda_pinned; do
  timeout 150 $N/$t --test-threads 2 > $E/test_$t.log 2>&1; log "test $t rc $? $(grep -o 'test result.*' $E/test_$t.log)"
done
unset KT_REQUIRE_GPU
J='"gpu_load_s":[0-9.]*\|"pin_s":[0-9.]*\|"repack_s":[0-9.]*'
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
  dec v3_pf_5082797_$r kt-bench-5082797 gpu-prefill/deepseek-v3-hybrid.yaml
done
dec v3_new kt-bench deepseek-v3-hybrid.yaml
dec v3_5082797 kt-bench-5082797 deepseek-v3-hybrid.yaml
rm -f $G
[ $((SECONDS-t0)) -gt 450 ] && { log "skip v2l"; log done; exit 0; }
G=/tmp/v2l.gguf
timeout 60 $N/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen_v2l.log 2>&1; log "gen v2l rc $? $(tail -1 $E/gen_v2l.log)"
dec v2l_pf_new kt-bench gpu-prefill/deepseek-v2-lite-hybrid.yaml
dec v2l_pf_5082797 kt-bench-5082797 gpu-prefill/deepseek-v2-lite-hybrid.yaml
rm -f $G
log done
