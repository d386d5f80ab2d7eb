#!/usr/bin/env bash
# Session 6 call B: the hybrid engine, main at 52e295c (chain7 + mla6 + kqamx + q56order) vs the session's start
# (s6base, fc3b061) on one V2-Lite GGUF: llama.cpp pp1024 + tg128, then decode A/B interleaved x3, llama.cpp
# tg128 again, kt hybrid prefill new/base. Results in $OUT/b (packed into $OUT/b.tgz at exit).
set -uo pipefail
E=$OUT/b; mkdir -p $E; trap 'cd $OUT && tar czf b.tgz b' EXIT
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s6b/bin.tar.xz -C $B; cp .device-carry/s6base/kt-bench $B/kt-bench-base
cp .device-carry/s6b/llamacpp-bench $B/; G=/tmp/v2l.gguf; t0=$SECONDS
log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1)"
timeout 150 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
timeout 100 $B/llamacpp-bench -m $G -p 1024 -n 128 -t 16 -r 2 > $E/llama1.out 2> $E/llama1.err; log "llama1 rc $? $(tail -3 $E/llama1.out | tr '\n' ' ')"
dec() { # tag exe
  timeout 100 $2 decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json \
    > $E/dec_$1.out 2> $E/dec_$1.err; log "dec $1 rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*' $E/dec_$1.out | head -1) $(grep -o '"dram_gbps":[0-9.]*' $E/dec_$1.out | head -1)"; }
for rep in 1 2 3; do
  [ $((SECONDS-t0)) -gt 270 ] && break
  dec new_$rep $B/kt-bench; dec base_$rep $B/kt-bench-base
done
[ $((SECONDS-t0)) -lt 320 ] && { timeout 40 $B/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 2 > $E/llama2.out 2> $E/llama2.err; log "llama2 rc $? $(tail -2 $E/llama2.out | tr '\n' ' ')"; }
for b in new base; do exe=$B/kt-bench; [ $b = base ] && exe=$B/kt-bench-base
  [ $((SECONDS-t0)) -lt 350 ] && { timeout 40 $exe prefill --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --threads 16 --json > $E/prefill_$b.out 2> $E/prefill_$b.err; log "prefill $b rc $? $(grep -o '"tokens_per_s":[0-9.]*' $E/prefill_$b.out | head -1)"; }
done
