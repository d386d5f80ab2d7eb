#!/usr/bin/env bash
# Session 7 call A: the decode graph's host timeline (new) on V2-Lite hybrid, threads 16 / 15 / 14.
set -uo pipefail
E=$OUT/a; mkdir -p $E; trap 'cd $OUT && tar czf a.tgz a' EXIT
B=.device-carry/s7a/kt-bench; G=/tmp/v2l.gguf; t0=$SECONDS
log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1)"
timeout 150 $B gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
dec() { # tag threads
  timeout 60 $B decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads $2 \
    > $E/dec_$1.out 2> $E/dec_$1.err; log "dec $1 rc $? $(grep -E '^decode|host timeline|routed experts in the graph|DRAM read' $E/dec_$1.out | tr '\n' ' ')"; }
dec t16a 16; dec t15a 15; dec t16b 16; dec t14 14; dec t15b 15
