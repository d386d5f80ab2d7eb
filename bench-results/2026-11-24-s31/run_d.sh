#!/usr/bin/env bash
# Session 31 call D: the hybrid V3 decode's experts against the standalone operator on one
# instance: the predicted-expert prefetch off / on in one process (KT_PREFETCH_AB), 15
# threads against 16, and the standalone one-token layer with probes between its calls.
set -uo pipefail
E=$OUT/d; mkdir -p $E; trap "cd $OUT && tar czf d.tgz d && rm -rf d" EXIT
N=/tmp/kt-d; mkdir -p $N; tar xJf .device-carry/s31d/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s31d/COMMIT)"
moe() { # tag shape seconds
  timeout 150 $N/kt-bench moe --shape $2 --format q4_k --tokens 1 --threads 16 --seconds $3 --json > $E/moe_$1.out 2> $E/moe_$1.err
  log "moe $1 rc $? $(grep -o '"ms_per_call":[0-9.]*\|"weight_gbps":[0-9.]*\|"dram_gbps":[0-9.]*\|"bandwidth_fraction":[0-9.]*\|"bandwidth_fraction_paired":[0-9.]*\|"dram_gbps_around":[^]]*' $E/moe_$1.out | tr '\n' ' ')"
}
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"decode_bound_fraction_paired":[0-9.]*\|"around_repetitions":[^]]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"routed_bandwidth_fraction_around":[0-9.]*\|"samples":[^]]*'
dec() { # tag threads [env]
  env ${3:-KT_NONE=1} timeout 150 $N/kt-bench decode --model $G --rules rules/deepseek-v3-hybrid.yaml --prompt-len 1024 --gen-len 128 \
    --threads $2 --json --repetitions 3 > $E/dec_$1.out 2> $E/dec_$1.err
  log "decode $1 rc $? $(grep -o "$J" $E/dec_$1.out | tr '\n' ' ')"
  python3 -c "
import json,sys
d=json.load(open('$E/dec_$1.out'))
for r in d.get('prefetch_ab',[]):
    t=r['decode_graph_timeline']; print('  ab', r['prefetch_rounds'], round(r['decode_tokens_per_s'],2), [round(x,3) for x in t['experts_per_layer_ms']], round(t['gpu_between_moe_ms']*1e3,1))
" | tee -a $E/summary.txt
}
moe v3_1 deepseek-v3 5
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_6.log 2>&1; log "gen 6 rc $? $(tail -1 $E/gen_6.log)"
dec ab16 16 KT_PREFETCH_AB=3:off,2
dec t15 15
dec t16 16
moe v3_2 deepseek-v3 5
rm -f $G
log done
