#!/usr/bin/env bash
# Session 27 call A (main at COMMIT): the DeepSeek-V3 shape end to end, as issue 6 asks and as last measured in
# session 4: synthetic V3 GGUFs of 4 layers (3 dense + 1 MoE) and 6 layers (3 dense + 3 MoE); on each, llama.cpp
# CPU-only (pp1024, tg128), kt hybrid decode (experts as stored, rules/deepseek-v3-hybrid.yaml), kt hybrid prefill
# with the GPU prefill experts (rules/gpu-prefill/...), kt cpu. Per MoE layer = (6 layers - 4 layers) / 2.
set -uo pipefail
E=$OUT/a; mkdir -p $E; trap 'cd $OUT && tar czf a.tgz a && rm -rf a' EXIT
C=.device-carry/s27a; B=/tmp/kt-bin; mkdir -p $B
xz -dc $C/kt-bench.xz > $B/kt-bench; xz -dc $C/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $C/COMMIT); disk $(df -h /tmp | tail -1)"
$B/kt-bench machine --threads 16 --json > $E/machine.json 2>&1; log "machine $(head -c 400 $E/machine.json)"
J='"gpu_load_s":[0-9.]*\|"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"prefill_tokens_per_s":[0-9.]*\|"tokens_per_s":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*'
for L in 4 6; do
  G=/tmp/v3_$L.gguf
  timeout 120 $B/kt-bench gen-gguf --preset deepseek-v3 --layers $L --out $G --threads 16 > $E/gen_$L.log 2>&1; log "gen $L rc $? $(cat $E/gen_$L.log | tail -1)"
  timeout 150 $B/llamacpp-bench -m $G -p 1024 -n 128 -t 16 -r 2 > $E/llama_$L.out 2> $E/llama_$L.err
  log "llama $L rc $? $(grep -o '"test":"[a-z0-9]*"\|"avg_ts":[0-9.]*' $E/llama_$L.out | tr '\n' ' ')"
  for r in 1 2; do
    timeout 120 $B/kt-bench decode --model $G --rules rules/deepseek-v3-hybrid.yaml --prompt-len 1024 --gen-len 128 \
      --threads 16 --json --repetitions 3 --svg $E/hybrid_$L.svg > $E/hyb_${L}_$r.out 2> $E/hyb_${L}_$r.err
    log "hybrid $L/$r rc $? $(grep -o "$J" $E/hyb_${L}_$r.out | head -8 | tr '\n' ' ')"
  done
  [ $((SECONDS-t0)) -lt 420 ] && { timeout 150 $B/kt-bench prefill --model $G --rules rules/gpu-prefill/deepseek-v3-hybrid.yaml \
    --prompt-len 1024 --threads 16 --json > $E/pre_$L.out 2> $E/pre_$L.err
    log "gpu prefill $L rc $? $(grep -o "$J" $E/pre_$L.out | head -6 | tr '\n' ' ')"; }
  [ $((SECONDS-t0)) -lt 480 ] && { timeout 90 $B/kt-bench decode --model $G --rules cpu --prompt-len 1024 --gen-len 128 \
    --threads 16 --json > $E/cpu_$L.out 2> $E/cpu_$L.err
    log "cpu $L rc $? $(grep -o "$J" $E/cpu_$L.out | head -6 | tr '\n' ' ')"; }
  rm -f $G
done
log done
