#!/usr/bin/env bash
# Session 28 call G (the binaries of call E): the V3 shape's hybrid decode with the CPU experts as stored (Q4_K_M mix,
# rules/deepseek-v3-hybrid.yaml) and repacked to int4 (rules/cpu-int4/deepseek-v3-hybrid.yaml), two processes each,
# beside llama.cpp's tg128 on the same file: 4 layers (3 dense + 1 MoE) and 6 (3 dense + 3 MoE).
set -uo pipefail
E=$OUT/g; mkdir -p $E; trap "cd $OUT && tar czf g.tgz g && rm -rf g" EXIT
C=.device-carry/s28e; B=/tmp/kt-bin; mkdir -p $B && tar xJf $C/bin.tar.xz -C $B
xz -dc $C/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $C/COMMIT | tr '\n' ' ')"
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*'
for L in 4 6; do
  G=/tmp/v3_$L.gguf
  timeout 120 $B/kt-bench gen-gguf --preset deepseek-v3 --layers $L --out $G --threads 16 > $E/gen_$L.log 2>&1; log "gen $L rc $? $(tail -1 $E/gen_$L.log)"
  timeout 100 $B/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 3 > $E/llama_$L.out 2> $E/llama_$L.err
  log "llama $L rc $? $(grep -o '"test":"[a-z0-9]*"\|"avg_ts":[0-9.]*' $E/llama_$L.out | tr '\n' ' ')"
  for rules in deepseek-v3-hybrid cpu-int4/deepseek-v3-hybrid; do
    tag=$(echo $rules | tr '/' '_')
    for r in 1 2; do
      [ $((SECONDS-t0)) -gt 520 ] && { log "skip $L $tag $r"; continue; }
      timeout 120 $B/kt-bench decode --model $G --rules rules/$rules.yaml --prompt-len 1024 --gen-len 128 \
        --threads 16 --json --repetitions 3 > $E/dec_${L}_${tag}_$r.out 2> $E/dec_${L}_${tag}_$r.err
      log "decode $L $rules/$r rc $? $(grep -o "$J" $E/dec_${L}_${tag}_$r.out | head -5 | tr '\n' ' ')"
    done
  done
  rm -f $G
done
log done
