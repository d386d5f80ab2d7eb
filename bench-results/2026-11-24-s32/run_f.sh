#!/usr/bin/env bash
# Session 32 call F: load times (gpu_load_s) of 4873edd (base) and b5d171a (the int4 pack on all
# cores, the GPU linears' quantization without the error pass, the expert repack's error measured
# while quantizing), processes in turn, with the GPU-prefill rules (every expert repacked) and
# the hybrid ones.
set -uo pipefail
E=$OUT/f; mkdir -p $E; trap 'cd $OUT && tar czf f.tgz f && rm -rf f' EXIT
N=/tmp/kt-f; mkdir -p $N/b0; tar xJf .device-carry/s32f/bin.tar.xz -C $N
tar xJf .device-carry/s32b/bin.tar.xz -C $N/b0; mv $N/b0/kt-bench $N/kt-bench-4873edd; chmod +x $N/kt-bench*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s32f/COMMIT)"
J='"gpu_load_s":[0-9.]*\|"decode_tokens_per_s":[0-9.]*'
dec() { # tag binary rules
  local s0=$SECONDS
  timeout 150 $N/$2 decode --model $G --rules rules/$3 --prompt-len 64 --gen-len 4 \
    --threads 16 --json --repetitions 1 > $E/dec_$1.out 2> $E/dec_$1.err
  log "decode $1 rc $? wall $((SECONDS-s0))s $(grep -o "$J" $E/dec_$1.out | tr '\n' ' ')"
}
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_6.log 2>&1; log "gen 6 rc $? $(tail -1 $E/gen_6.log)"
dec v3_pf_new_1 kt-bench gpu-prefill/deepseek-v3-hybrid.yaml
dec v3_pf_4873edd kt-bench-4873edd gpu-prefill/deepseek-v3-hybrid.yaml
dec v3_pf_new_2 kt-bench gpu-prefill/deepseek-v3-hybrid.yaml
dec v3_4873edd kt-bench-4873edd deepseek-v3-hybrid.yaml
dec v3_new kt-bench deepseek-v3-hybrid.yaml
rm -f $G
[ $((SECONDS-t0)) -gt 420 ] && { log "skip v2l"; log done; exit 0; }
G=/tmp/v2l.gguf
timeout 60 $N/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen_v2l.log 2>&1; log "gen v2l rc $? $(tail -1 $E/gen_v2l.log)"
dec v2l_pf_new kt-bench gpu-prefill/deepseek-v2-lite-hybrid.yaml
[ $((SECONDS-t0)) -gt 520 ] || dec v2l_pf_4873edd kt-bench-4873edd gpu-prefill/deepseek-v2-lite-hybrid.yaml
rm -f $G
log done
