#!/usr/bin/env bash
# Session 9 quick check: V3 Q4_K 512 (and V2-Lite Q4_K 512), 256-row busy items (main ff7303a) vs the same code with
# 128-row items vs s9base, rotating order x3. 16 threads, --cpu-time. <= 170 s.
set -uo pipefail
E=$OUT/q; mkdir -p $E; trap 'cd $OUT && tar czf q.tgz q' EXIT
B=/tmp/s9q; mkdir -p $B; for v in r128 r256; do xz -dc .device-carry/s9q/kt-bench-$v.xz > $B/$v; chmod +x $B/$v; done; cp .device-carry/s9base/kt-bench $B/base
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
for order in "r256 r128 base" "r128 base r256" "base r256 r128"; do for v in $order; do
  [ $((SECONDS-t0)) -gt 150 ] && continue
  j=$(timeout 40 $B/$v moe --shape deepseek-v3 --format q4_k --tokens 512 --seconds 0.5 --threads 16 --json --cpu-time 2>>$E/err.txt)
  log "$v v3q4k512 $(echo "$j" | grep -o '"ms_per_call":[0-9.]*\|"cpu_ms_per_call":[0-9.]*' | tr '\n' ' ')"
done; done
