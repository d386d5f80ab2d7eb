#!/usr/bin/env bash
# Call G2: the same V3 Q4_K T=1 runs with --cpu-time (as the final call ran them), f2 (924de5a) vs base, x2.
set -uo pipefail
E=$OUT/g2; mkdir -p $E; trap 'cd $OUT && tar czf g2.tgz g2' EXIT
B=/tmp/g; mkdir -p $B/f2; tar xJf .device-carry/s7f2/bin.tar.xz -C $B/f2 ./kt-bench
cp .device-carry/s7base/kt-bench $B/base; cp $B/f2/kt-bench $B/f2b
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
m() { local label=$1; shift
  timeout 40 $B/$label moe --shape deepseek-v3 --format q4_k --tokens 1 --threads 16 --seconds 0.5 --json "$@" 2>>$E/err.txt | sed "s/^{/{\"bin\":\"$label\",/" >> $E/moe.jsonl
  log "$label $* rc ${PIPESTATUS[0]} $(tail -1 $E/moe.jsonl | grep -o '"ms_per_call":[0-9.]*\|"cpu_ms_per_call":[0-9.]*\|"copies":[0-9]*' | tr '\n' ' ')"; }
for r in 1 2; do m f2b --cpu-time; m base --cpu-time; done
m f2b; m base
