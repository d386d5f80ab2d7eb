#!/usr/bin/env bash
# Session 38 call B: issue 6 with the final code (COMMIT), llama.cpp on the same files in the same call.
# V2-Lite (27 layers) and the V3 shape at 6 layers (3 dense + 3 MoE): llama.cpp pp1024 / tg128, kt's
# hybrid decode (rules as shipped, 3 repetitions, time split as SVG), kt's GPU prefill (gpu-prefill rules
# as shipped), kt cpu (the cpu rules) decode and prefill; then, time left, the V3 shape at 4 layers
# (3 dense + 1 MoE) for per-MoE-layer figures from the difference.
set -uo pipefail
E=$OUT/b; mkdir -p $E; trap 'cd $OUT && tar czf b.tgz b && rm -rf b' EXIT
C=.device-carry/s38; N=/tmp/kt-b; mkdir -p $N; tar xJf $C/bin.tar.xz -C $N ./kt-bench; xz -dc $C/llamacpp-bench.xz > $N/llamacpp-bench; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $C/COMMIT)"
J='"decode_tokens_per_s":[0-9.]*\|"prefill_tokens_per_s":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"moe_layer_bound_fraction_around":[0-9.]*\|"decode_bound_fraction_paired":[0-9.]*\|"routed_bandwidth_fraction_around":[0-9.]*\|"predicted_hit_rate":[0-9.]*'
run() { # tag limit mode rules [args]
  local tag=$1 lim=$2 mode=$3 rules=$4; shift 4; local s0=$SECONDS
  [ $((SECONDS-t0+lim)) -gt 590 ] && { log "skip $tag"; return; }
  timeout $lim $N/kt-bench $mode --model $G --rules rules/$rules --prompt-len 1024 --threads 16 --json "$@" > $E/$tag.out 2> $E/$tag.err
  log "$tag rc $? wall $((SECONDS-s0))s $(grep -o "$J" $E/$tag.out | head -8 | tr '\n' ' ')"
}
llama() { # tag limit args
  local tag=$1 lim=$2; shift 2; [ $((SECONDS-t0+lim)) -gt 590 ] && { log "skip $tag"; return; }
  timeout $lim $N/llamacpp-bench -m $G -t 16 "$@" > $E/$tag.out 2> $E/$tag.err
  log "$tag rc $? $(grep -o '"test":"[a-z0-9]*"\|"avg_ts":[0-9.]*\|"samples_s":[^]]*' $E/$tag.out | tr '\n' ' ')"
}
G=/tmp/v2l.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen_v2l.log 2>&1; log "gen v2l rc $? $(tail -1 $E/gen_v2l.log)"
llama llama_v2l 120 -p 1024 -n 128 -r 3
run hyb_dec_v2l 120 decode deepseek-v2-lite-hybrid.yaml --gen-len 128 --repetitions 3 --svg $E/hyb_dec_v2l.svg
run hyb_pre_v2l 90 prefill gpu-prefill/deepseek-v2-lite-hybrid.yaml --svg $E/hyb_pre_v2l.svg
run cpu_dec_v2l 90 decode deepseek-v2-lite-cpu.yaml --gen-len 128
run cpu_pre_v2l 60 prefill deepseek-v2-lite-cpu.yaml
rm -f $G
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_v3_6.log 2>&1; log "gen v3_6 rc $? $(tail -1 $E/gen_v3_6.log)"
llama llama_v3_6 120 -p 1024 -n 128 -r 2
run hyb_dec_v3_6 120 decode deepseek-v3-hybrid.yaml --gen-len 128 --repetitions 3 --svg $E/hyb_dec_v3_6.svg
run hyb_pre_v3_6 100 prefill gpu-prefill/deepseek-v3-hybrid.yaml --svg $E/hyb_pre_v3_6.svg
run cpu_dec_v3_6 60 decode deepseek-v3-cpu.yaml --gen-len 32
rm -f $G
G=/tmp/v3_4.gguf
[ $((SECONDS-t0)) -lt 420 ] && { timeout 60 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 4 --out $G --threads 16 > $E/gen_v3_4.log 2>&1; log "gen v3_4 rc $? $(tail -1 $E/gen_v3_4.log)"
  llama llama_v3_4 70 -p 1024 -n 128 -r 1
  run hyb_pre_v3_4 60 prefill gpu-prefill/deepseek-v3-hybrid.yaml
  run hyb_dec_v3_4 50 decode deepseek-v3-hybrid.yaml --gen-len 128; }
rm -f $G
log done
