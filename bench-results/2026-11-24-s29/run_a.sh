#!/usr/bin/env bash
# Session 29 call A: (1) where the V3 decode's GPU time goes, kernel by kernel: ncu's
# gpu__time_duration of every kernel of an eager `kt-bench decode --eager` on the V3 4-layer
# file (caches flushed before each kernel, as in a decode step where the other layers' weights
# pass between two visits); (2) the V3 crossover again, each prompt length warmed once untimed
# first (8322e6a), Q4_K rules and int4 rules.
set -uo pipefail
E=$OUT/a; mkdir -p $E; trap "cd $OUT && tar czf a.tgz a && rm -rf a" EXIT
C=.device-carry/s29a; B=/tmp/kt-bin; mkdir -p $B && tar xJf $C/bin.tar.xz -C $B; chmod +x $B/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $C/COMMIT | tr '\n' ' ')"
timeout 120 $B/kt-bench gen-gguf --preset deepseek-v3 --layers 4 --out /tmp/v3_4.gguf --threads 16 > $E/gen.log 2>&1; log "gen rc $? $(tail -1 $E/gen.log)"
timeout 420 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base -c 1400 \
  --log-file $E/ncu.csv $B/kt-bench decode --model /tmp/v3_4.gguf --rules rules/deepseek-v3-hybrid.yaml \
  --prompt-len 64 --gen-len 2 --threads 16 --eager --json > $E/ncu_app.out 2> $E/ncu_app.err
log "ncu rc $? lines $(wc -l < $E/ncu.csv)"
for r in deepseek-v3-hybrid deepseek-v3-int4-hybrid; do
  timeout 300 $B/kt-bench prefill --model /tmp/v3_4.gguf --rules rules/gpu-prefill/$r.yaml --prompt-len 1024 \
    --threads 16 --json --crossover > $E/crossover_$r.out 2> $E/crossover_$r.err
  log "crossover $r rc $? $(grep -o '"crossover":{[^}]*}[^]]*]' $E/crossover_$r.out | head -c 3000)"
done
rm -f /tmp/v3_4.gguf
log done
