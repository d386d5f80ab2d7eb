#!/usr/bin/env bash
# Session 12 call F3: one more instance for issue 6's decode ratio and issue 4's prefill targets: llama.cpp tg128 -r 5,
# kt hybrid decode (--repetitions 5) x2, llama.cpp again, kt-bench moe V3 Q4_K 512 and V2-Lite int4 512 (new only).
set -uo pipefail
E=$OUT/f3; mkdir -p $E; trap 'cd $OUT && tar czf f3.tgz f3 && rm -rf f3' EXIT
D=.device-carry/s12f3; B=/tmp/kt-bin3; mkdir -p $B
xz -dc $D/kt-bench.xz > $B/kt-bench; xz -dc $D/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $D/COMMIT)"
G=/tmp/v2l.gguf
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
ll() { timeout 50 $B/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 5 > $E/llama$1.out 2> $E/llama$1.err; log "llama$1 rc $? $(grep -o '"avg_ts":[0-9.]*' $E/llama$1.out | tr '\n' ' ')"; }
dec() { timeout 100 $B/kt-bench decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 5 \
    > $E/dec_$1.out 2> $E/dec_$1.err; log "dec $1 rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"samples":[^]]*' $E/dec_$1.out | tr '\n' ' ')"; }
ll 1; dec new_1; ll 2; dec new_2; ll 3
rm -f $G
m() { timeout 40 $B/kt-bench moe "$@" --threads 16 --json 2>>$E/moe_err.txt >> $E/moe.jsonl; log "moe $* rc $? $(tail -1 $E/moe.jsonl | grep -o '"ms_per_call":[0-9.]*\|"dram_gbps":[0-9.]*' | tr '\n' ' ')"; }
m --shape deepseek-v3 --format q4_k --tokens 512 --seconds 0.5
m --shape deepseek-v2-lite --format int4 --group 128 --tokens 512 --seconds 0.5
m --shape deepseek-v3 --format q4_k --tokens 1 --seconds 0.5
log done
