#!/usr/bin/env bash
# Session 6 call A: main at f8024cd (chain7 + mla6 merged) vs session start (s6base, fc3b061): hybrid decode
# A/B interleaved x3 on one V2-Lite GGUF, llama.cpp pp1024/tg128 on the same file before and after, kt
# hybrid prefill once, then the GPU test binaries. Results in $OUT/a, packed into $OUT/a.tgz at exit.
set -uo pipefail
E=$OUT/a; mkdir -p $E/tests; trap 'cd $OUT && tar czf a.tgz a' EXIT
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s6a/bin.tar.xz -C $B; cp .device-carry/s6base/kt-bench $B/kt-bench-base
cp .device-carry/s6a/llamacpp-bench $B/; G=/tmp/v2l.gguf; t0=$SECONDS
log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1)"
timeout 150 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
timeout 90 $B/llamacpp-bench -m $G -p 1024 -n 128 -t 16 -r 2 -o json > $E/llama1.out 2> $E/llama1.err; log "llama1 rc $?"
dec() { # tag exe
  timeout 100 $2 decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json \
    > $E/dec_$1.out 2> $E/dec_$1.err; log "dec $1 rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*' $E/dec_$1.out | head -1)"; }
for rep in 1 2 3; do
  [ $((SECONDS-t0)) -gt 300 ] && break
  dec new_$rep $B/kt-bench; dec base_$rep $B/kt-bench-base
done
[ $((SECONDS-t0)) -lt 330 ] && { timeout 60 $B/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 2 -o json > $E/llama2.out 2> $E/llama2.err; log "llama2 rc $?"; }
[ $((SECONDS-t0)) -lt 350 ] && { timeout 60 $B/kt-bench prefill --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --threads 16 --json > $E/prefill.out 2> $E/prefill.err; log "prefill rc $?"; }
for t in $B/tests/*; do
  [ $((SECONDS-t0)) -gt 420 ] && { log "tests: budget stop before $(basename $t)"; break; }
  KT_REQUIRE_GPU=1 timeout 60 $t --test-threads 1 > $E/tests/$(basename $t).log 2>&1; log "test $(basename $t) rc $? $(grep -o 'test result: [a-z]*\. [0-9]* passed; [0-9]* failed' $E/tests/$(basename $t).log)"
done
