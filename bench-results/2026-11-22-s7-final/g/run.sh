#!/usr/bin/env bash
# Session 7 call G: the V3 Q4_K T=1 MoE regression seen in the final call. base = s7base (4e33a0b), f1 = main before
# the amx7 merge (f4b7af3), f2 = main after it (924de5a); interleaved x2; then f2 and base at T=1 with KT_ISA=avx512.
set -uo pipefail
E=$OUT/g; mkdir -p $E; trap 'cd $OUT && tar czf g.tgz g' EXIT
B=/tmp/g; mkdir -p $B/f1 $B/f2; tar xJf .device-carry/s7f1/bin.tar.xz -C $B/f1 ./kt-bench; tar xJf .device-carry/s7f2/bin.tar.xz -C $B/f2 ./kt-bench
cp .device-carry/s7base/kt-bench $B/base; cp $B/f1/kt-bench $B/f1b; cp $B/f2/kt-bench $B/f2b
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
m() { local label=$1 tok=$2; shift 2
  timeout 40 $B/$label moe --shape deepseek-v3 --format q4_k --tokens $tok --threads 16 --seconds 0.5 --json "$@" 2>>$E/err.txt | sed "s/^{/{\"bin\":\"$label\",/" >> $E/moe.jsonl
  log "$label T=$tok $* rc ${PIPESTATUS[0]} $(tail -1 $E/moe.jsonl | grep -o '"ms_per_call":[0-9.]*')"; }
for r in 1 2; do m base 1; m f1b 1; m f2b 1; done
KT_ISA=avx512 m f2b 1; KT_ISA=avx512 m base 1
m f2b 2; m base 2
