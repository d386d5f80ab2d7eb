#!/usr/bin/env bash
# Session 7 call C: gemm7's script (its own tar), then the decode A/B of the main-thread pin:
# s7a (timeline, caller unpinned) vs s7b (timeline + kt-bench pins its main thread to core 0), x3 interleaved.
set -uo pipefail
timeout 250 bash .device-carry/gemm7/run.sh > $OUT/gemm7_stdout.txt 2>&1
E=$OUT/c; mkdir -p $E; trap 'cd $OUT && tar czf c.tgz c' EXIT
G=/tmp/v2l.gguf; t0=$SECONDS
log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
timeout 60 .device-carry/s7b/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
dec() { # tag exe
  timeout 50 $2 decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 \
    > $E/dec_$1.out 2> $E/dec_$1.err; log "dec $1 rc $? $(grep -E '^decode|host timeline|routed experts in the graph|DRAM read' $E/dec_$1.out | tr '\n' ' ')"; }
for rep in 1 2 3; do
  [ $((SECONDS-t0)) -gt 250 ] && break
  dec pin_$rep .device-carry/s7b/kt-bench; dec nopin_$rep .device-carry/s7a/kt-bench
done
