#!/usr/bin/env bash
# Session 31 call A: how much the standalone one-token MoE's uniform routing was flattered by
# experts still in the L3 (uniform vs fresh routing, taking turns call by call in one process),
# and the hybrid V3 decode's experts on the same instance.
set -uo pipefail
E=$OUT/a; mkdir -p $E; trap "cd $OUT && tar czf a.tgz a && rm -rf a" EXIT
N=/tmp/kt-a; mkdir -p $N; tar xJf .device-carry/s31a/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s31a/COMMIT)"
moe() { # tag shape format seconds [extra]
  timeout 150 $N/kt-bench moe --shape $2 --format $3 --tokens 1 --threads 16 --seconds $4 --routing uniform,fresh --json ${5:-} > $E/moe_$1.out 2> $E/moe_$1.err
  log "moe $1 rc $? $(grep -o '"routing":"[a-z]*"\|"ms_per_call":[0-9.]*\|"weight_gbps":[0-9.]*\|"dram_gbps":[0-9.]*\|"fresh_fallback_calls":[0-9]*' $E/moe_$1.out | tr '\n' ' ')"
}
moe v3_1 deepseek-v3 q4_k 5
moe v2l_1 deepseek-v2-lite q4_k 3
moe v3int4_1 deepseek-v3 int4 4 "--group 128"
moe v3_2 deepseek-v3 q4_k 5
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"experts_per_layer_gbps":[^]]*\|"experts_quantiles_ms":[^]]*\|"gpu_between_moe_ms":[0-9.]*\|"routed_bandwidth_fraction":[0-9.]*'
dec() { # tag
  timeout 110 $N/kt-bench decode --model $G --rules rules/deepseek-v3-hybrid.yaml --prompt-len 1024 --gen-len 128 \
    --threads 16 --json --repetitions 3 > $E/dec_$1.out 2> $E/dec_$1.err
  log "decode $1 rc $? $(grep -o "$J" $E/dec_$1.out | tr '\n' ' ')"
}
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_6.log 2>&1; log "gen 6 rc $? $(tail -1 $E/gen_6.log)"
dec v3_1; dec v3_2
rm -f $G
log done
