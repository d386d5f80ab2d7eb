#!/usr/bin/env bash
# Session 15 call F (branch s15-pf-exp): the AVX512 GEMV prefetch modes A/B'd in one process, call by call
# (KT_GEMV_PF_AB, kt-bench moe T=1, V3 and V2-Lite, two processes each), then V2-Lite 27-layer decodes with
# KT_GEMV_PF=0 / 1 alternating, llama.cpp tg128 before and after.
set -uo pipefail
E=$OUT/f; mkdir -p $E; trap 'cd $OUT && tar czf f.tgz f && rm -rf f' EXIT
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s15f/bin.tar.xz -C $B ./kt-bench
xz -dc .device-carry/s13f/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/llamacpp-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s15f/COMMIT)"
for r in 1 2; do for s in deepseek-v3 deepseek-v2-lite; do
  KT_GEMV_PF_AB=0,1,6,5 timeout 90 $B/kt-bench moe --shape $s --format q4_k --tokens 1 --threads 16 --seconds 4 --json > $E/moe_${s}_$r.jsonl 2>>$E/errors.txt
  log "moe $s r$r $(grep gemv_pf_mode $E/moe_${s}_$r.jsonl | python3 -c "
import json,sys
print(' '.join('m%d %.4fms %.1fGB/s' % (j['gemv_pf_mode'], j['ms_per_call'], j['weight_gbps']) for j in map(json.loads, sys.stdin)))") dram $(tail -1 $E/moe_${s}_$r.jsonl | grep -o '"dram_gbps":[0-9.]*')"
done; done
G=/tmp/v2l.gguf
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
dec() { KT_GEMV_PF=$2 timeout 150 $B/kt-bench decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 5 \
    > $E/dec_$1.out 2> $E/dec_$1.err; log "dec $1 (pf $2) rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*' $E/dec_$1.out | head -3 | tr '\n' ' ')"; }
ll() { timeout 50 $B/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 5 > $E/llama$1.out 2> $E/llama$1.err; log "llama$1 rc $? $(grep -o '"avg_ts":[0-9.]*' $E/llama$1.out | tr '\n' ' ')"; }
ll 1; dec a0 0; dec a1 1; dec b1 1; dec b0 0; ll 2
rm -f $G
log done
