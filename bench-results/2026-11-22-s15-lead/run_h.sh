#!/usr/bin/env bash
# Session 15 call H (main at f5ad10f, call G's binaries): is the one-token GEMV compute- or memory-bound on the
# Xeon? kt-bench matmul --resident (one copy, cache-resident) against the DRAM-cycled run, 1 / 8 / 16 threads.
set -uo pipefail
E=$OUT/h; mkdir -p $E; trap 'cd $OUT && tar czf h.tgz h && rm -rf h' EXIT
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s15g/bin.tar.xz -C $B ./kt-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
for t in 1 8 16; do
  for res in --resident ""; do
    $B/kt-bench matmul --threads $t --formats q4_K,q2_K,q6_K,bf16 --shapes 7168x2048,1408x2048 --tokens 1 --seconds 0.2 --json $res 2>>$E/errors.txt | sed "s/^{/{\"t\":$t,/" >> $E/res.jsonl
    log "threads $t $res"
  done
done
python3 - $E <<'PY' | tee $E/table.txt
import json, sys
for l in open(sys.argv[1] + '/res.jsonl'):
    r = json.loads(l)
    if 'skipped' in r: continue
    print(r['t'], 'resident' if r['resident'] else 'dram', r['format'], f"{r['rows']}x{r['cols']}", '%.1f us' % (r['ms_per_call'] * 1e3), '%.1f GB/s' % r['weight_gbps'], 'probe %.1f' % r['dram_gbps'])
PY
