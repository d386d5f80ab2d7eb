#!/usr/bin/env bash
# Session 32 call H: the expert repack with one rows buffer per thread (HEAD) against b5d171a,
# processes in turn, V3 6 layers with the GPU-prefill rules (every expert repacked at load);
# first the GPU-prefill test binary of HEAD.
set -uo pipefail
E=$OUT/h; mkdir -p $E; trap 'cd $OUT && tar czf h.tgz h && rm -rf h' EXIT
N=/tmp/kt-h; mkdir -p $N/b; tar xJf .device-carry/s32h/bin.tar.xz -C $N
chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s32h/COMMIT)"
KT_REQUIRE_GPU=1 timeout 150 $N/hybrid_prefill --test-threads 2 > $E/test_hybrid_prefill.log 2>&1; log "test hybrid_prefill rc $? $(grep -o 'test result.*' $E/test_hybrid_prefill.log)"
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
  dec v3_pf_b5d171a_$r kt-bench-b5d171a gpu-prefill/deepseek-v3-hybrid.yaml
done
rm -f $G
log done
