#!/usr/bin/env bash
# Session 28 call J (the binaries of call H): where the GPU prefill now overtakes the CPU experts repacked to int4 on the V3 shape
# (4-layer file): `kt-bench prefill --crossover` with the V3 int4 GPU-prefill rules (43 resident and a CPU share of 0.25 on the GPU side, as those rules run above their threshold),
# prompts of 32-2048 tokens on each path, after the run itself.
set -uo pipefail
E=$OUT/j; mkdir -p $E; trap "cd $OUT && tar czf j.tgz j && rm -rf j" EXIT
C=.device-carry/s28h; B=/tmp/kt-bin; mkdir -p $B && tar xJf $C/bin.tar.xz -C $B; chmod +x $B/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $C/COMMIT | tr '\n' ' ')"
timeout 120 $B/kt-bench gen-gguf --preset deepseek-v3 --layers 4 --out /tmp/v3_4.gguf --threads 16 > $E/gen.log 2>&1; log "gen rc $? $(tail -1 $E/gen.log)"
timeout 400 $B/kt-bench prefill --model /tmp/v3_4.gguf --rules rules/gpu-prefill/deepseek-v3-int4-hybrid.yaml --prompt-len 1024 \
  --threads 16 --json --crossover > $E/crossover.out 2> $E/crossover.err
log "crossover rc $? $(grep -o '"crossover":{.*}' $E/crossover.out | head -c 2000)"
rm -f /tmp/v3_4.gguf
log done
