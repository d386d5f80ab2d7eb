#!/usr/bin/env bash
# Session 31 call H: the predicted-expert prefetch off or two rounds (the default) in one
# process per file (KT_PREFETCH_AB), V2-Lite (two processes) and V3 6 layers.
set -uo pipefail
E=$OUT/h; mkdir -p $E; trap "cd $OUT && tar czf h.tgz h && rm -rf h" EXIT
N=/tmp/kt-h; mkdir -p $N; tar xJf .device-carry/s31f/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s31f/COMMIT)"
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"decode_bound_fraction_paired":[0-9.]*\|"around_repetitions":[^]]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"routed_bandwidth_fraction_around":[0-9.]*'
dec() { # tag rules
  KT_PREFETCH_AB=3:off,2 timeout 200 $N/kt-bench decode --model $G --rules rules/$2 --prompt-len 1024 --gen-len 128 \
    --threads 16 --json --repetitions 3 > $E/dec_$1.out 2> $E/dec_$1.err
  log "decode $1 rc $? $(grep -o "$J" $E/dec_$1.out | head -7 | tr '\n' ' ')"
  python3 -c "
import json
d=json.load(open('$E/dec_$1.out'))
for r in d.get('prefetch_ab',[]):
    t=r['decode_graph_timeline']; print('  ab', r['prefetch_rounds'], round(r['decode_tokens_per_s'],2), round(t['experts_per_moe_layer_ms'],4), round(t['gpu_between_moe_ms']*1e3,1))
" | tee -a $E/summary.txt
}
G=/tmp/v2l.gguf
timeout 60 $N/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen_v2l.log 2>&1; log "gen v2l rc $? $(tail -1 $E/gen_v2l.log)"
dec v2l_1 deepseek-v2-lite-hybrid.yaml
dec v2l_2 deepseek-v2-lite-hybrid.yaml
rm -f $G
[ $((SECONDS-t0)) -gt 330 ] && { log "skip v3"; log done; exit 0; }
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_6.log 2>&1; log "gen 6 rc $? $(tail -1 $E/gen_6.log)"
dec v3_1 deepseek-v3-hybrid.yaml
rm -f $G
log done
