#!/usr/bin/env bash
# Session 32 call E: the hybrid load time (gpu_load_s) of base (4873edd, .device-carry/s32b) and
# new (the int4 layout packed word by word on all cores, the GPU linears' quantization without
# its error pass, bf16 rounding on all cores), processes in turn, V3 6 layers and V2-Lite.
set -uo pipefail
E=$OUT/e; mkdir -p $E; trap 'cd $OUT && tar czf e.tgz e && rm -rf e' EXIT
N=/tmp/kt-e; mkdir -p $N/base; tar xJf .device-carry/s32e/bin.tar.xz -C $N; tar xJf .device-carry/s32b/bin.tar.xz -C $N/base
mv $N/base/kt-bench $N/kt-bench-base; chmod +x $N/kt-bench*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s32e/COMMIT)"
J='"gpu_load_s":[0-9.]*\|"decode_tokens_per_s":[0-9.]*'
dec() { # tag binary rules
  local s0=$SECONDS
  timeout 100 $N/$2 decode --model $G --rules rules/$3 --prompt-len 64 --gen-len 16 \
    --threads 16 --json --repetitions 1 > $E/dec_$1.out 2> $E/dec_$1.err
  log "decode $1 rc $? wall $((SECONDS-s0))s $(grep -o "$J" $E/dec_$1.out | tr '\n' ' ')"
}
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_6.log 2>&1; log "gen 6 rc $? $(tail -1 $E/gen_6.log)"
for r in 1 2; do dec v3_base_$r kt-bench-base deepseek-v3-hybrid.yaml; dec v3_new_$r kt-bench deepseek-v3-hybrid.yaml; done
rm -f $G
G=/tmp/v2l.gguf
timeout 60 $N/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen_v2l.log 2>&1; log "gen v2l rc $? $(tail -1 $E/gen_v2l.log)"
for r in 1 2; do dec v2l_base_$r kt-bench-base deepseek-v2-lite-hybrid.yaml; dec v2l_new_$r kt-bench deepseek-v2-lite-hybrid.yaml; done
rm -f $G
log done
