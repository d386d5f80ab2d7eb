#!/usr/bin/env bash
# Session 12 call A (issue 6): the decode rate as a mean of repetitions after a warm-up (new, --repetitions 5) beside
# base (54a8a0b: one graph decode after the probe) and llama.cpp tg128 -r 5 (warm-up + 5), one V2-Lite GGUF.
set -uo pipefail
E=$OUT/a; mkdir -p $E; trap 'cd $OUT && tar czf a.tgz a && rm -rf a' EXIT
D=.device-carry/s12a; B=/tmp/kt-bin; mkdir -p $B
xz -dc $D/kt-bench.xz > $B/kt-bench; xz -dc .device-carry/s12base/kt-bench.xz > $B/kt-bench-base
xz -dc $D/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1)"
G=/tmp/v2l.gguf
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
ll() { timeout 50 $B/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 5 > $E/llama$1.out 2> $E/llama$1.err; log "llama$1 rc $? $(grep -o '"avg_ts":[0-9.]*\|"samples_s":[^]]*' $E/llama$1.out | tr '\n' ' ')"; }
dec() { env ${3:-} timeout 100 $2 decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json ${4:-} \
    > $E/dec_$1.out 2> $E/dec_$1.err; log "dec $1 rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"samples":[^]]*' $E/dec_$1.out | tr '\n' ' ')"; }
ll 1
dec new_1 $B/kt-bench "" "--repetitions 5"
dec base_1 $B/kt-bench-base
dec new_2 $B/kt-bench "" "--repetitions 5"
ll 2
[ $((SECONDS-t0)) -lt 190 ] && dec base_2 $B/kt-bench-base KT_PREFETCH_AB=2
log done
