#!/usr/bin/env bash
# Session 29 call F (the binaries of call E = ca84216; base = call A's, 8218223 + the --eager flag):
# the decode A/B on a fresh instance, three processes each in turn on the V3 6-layer file and two
# on the V2-Lite file (27 layers), with llama.cpp's tg128 on both files in the same call.
set -uo pipefail
E=$OUT/f; mkdir -p $E; trap "cd $OUT && tar czf f.tgz f && rm -rf f" EXIT
A=/tmp/kt-base; N=/tmp/kt-new; mkdir -p $A $N
tar xJf .device-carry/s29a/bin.tar.xz -C $A; tar xJf .device-carry/s29e/bin.tar.xz -C $N
xz -dc .device-carry/s29e/llamacpp-bench.xz > $N/llamacpp-bench; chmod +x $A/* $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s29e/COMMIT)"
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"first_gpu_ms":[0-9.]*\|"tail_ms":[0-9.]*\|"routed_bandwidth_fraction":[0-9.]*'
dec() { # tag binary model rules
  timeout 110 $2/kt-bench decode --model $3 --rules rules/$4 --prompt-len 1024 --gen-len 128 \
    --threads 16 --json --repetitions 3 > $E/dec_$1.out 2> $E/dec_$1.err
  log "decode $1 rc $? $(grep -o "$J" $E/dec_$1.out | tr '\n' ' ')"
}
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_6.log 2>&1; log "gen 6 rc $? $(tail -1 $E/gen_6.log)"
for r in 1 2 3; do dec v3_base_$r $A $G deepseek-v3-hybrid.yaml; dec v3_new_$r $N $G deepseek-v3-hybrid.yaml; done
timeout 100 $N/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 3 > $E/llama_v3_6.out 2> $E/llama_v3_6.err
log "llama v3 6 rc $? $(grep -o '"test":"[a-z0-9]*"\|"avg_ts":[0-9.]*' $E/llama_v3_6.out | tr '\n' ' ')"
rm -f $G
G=/tmp/v2l.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen_v2l.log 2>&1; log "gen v2l rc $? $(tail -1 $E/gen_v2l.log)"
for r in 1 2; do
  [ $((SECONDS-t0)) -gt 480 ] && { log "skip v2l $r"; continue; }
  dec v2l_base_$r $A $G deepseek-v2-lite-hybrid.yaml; dec v2l_new_$r $N $G deepseek-v2-lite-hybrid.yaml
done
[ $((SECONDS-t0)) -lt 540 ] && { timeout 50 $N/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 3 > $E/llama_v2l.out 2> $E/llama_v2l.err
  log "llama v2l rc $? $(grep -o '"test":"[a-z0-9]*"\|"avg_ts":[0-9.]*' $E/llama_v2l.out | tr '\n' ' ')"; }
rm -f $G
log done
