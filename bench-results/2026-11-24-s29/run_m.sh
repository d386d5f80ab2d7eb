#!/usr/bin/env bash
# Session 29 call M: kt-bench decode's text and JSON with and without --eager (a synthetic V2-Lite
# of 4 layers built in memory, the shipped hybrid rules): under --eager no pipelined rate is claimed.
set -uo pipefail
E=$OUT/m; mkdir -p $E; trap "cd $OUT && tar czf m.tgz m && rm -rf m" EXIT
B=/tmp/kt-m; mkdir -p $B; xz -dc .device-carry/s29m/kt-bench.xz > $B/kt-bench; chmod +x $B/kt-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(nvidia-smi -L | head -1); $(cat .device-carry/s29m/COMMIT)"
for f in "" "--eager"; do
  timeout 120 $B/kt-bench decode --model deepseek-v2-lite --layers 4 --rules rules/deepseek-v2-lite-hybrid.yaml \
    --prompt-len 64 --gen-len 16 $f > $E/text$f.out 2> $E/text$f.err; log "text $f rc $? $(grep '^decode:' $E/text$f.out)"
  timeout 120 $B/kt-bench decode --model deepseek-v2-lite --layers 4 --rules rules/deepseek-v2-lite-hybrid.yaml \
    --prompt-len 64 --gen-len 16 --json $f > $E/json$f.out 2> $E/json$f.err
  log "json $f rc $? $(grep -o '"eager":[a-z]*\|"decode_pipelined_tokens_per_s":[a-z0-9.]*\|"decode_tokens_per_s":[0-9.]*\|"decode_graph_launches":[0-9]*' $E/json$f.out | tr '\n' ' ')"
done
log done
