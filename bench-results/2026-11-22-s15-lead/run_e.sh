#!/usr/bin/env bash
# Session 15 call E (branch s15-pf-exp at COMMIT): 1) read patterns with L2 prefetch; 2) the AVX512 one-token GEMV's
# weight prefetch, KT_GEMV_PF = 0 (main: the next tile's rows into L1), 1 (+ the tile after into L2), 2 (only the tile
# after, into L2), 4 (the next two tiles into L1), 5 (main + three tiles ahead into L2): GEMVs and MoE T=1, rounds
# alternating.
set -uo pipefail
E=$OUT/e; mkdir -p $E; trap 'cd $OUT && tar czf e.tgz e && rm -rf e' EXIT
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s15e/bin.tar.xz -C $B ./kt-bench
xz -dc .device-carry/s15e/membw_patterns.xz > $B/membw_patterns; chmod +x $B/membw_patterns
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s15e/COMMIT)"
$B/membw_patterns 16 1:0,8:1024,8:1024l2,8:4096l2,16:2048l2,4:2048l2,8:2048,12:1024,8:1024 > $E/patterns16.jsonl 2>&1; log "patterns 16 $(python3 -c "
import json; print(' '.join('%s=%.1f' % (j['pattern'], j['gbps']) for j in map(json.loads, open('$E/patterns16.jsonl'))))")"
for round in 1 2; do
  order="0 1 4 2 5"; [ $round = 2 ] && order="5 2 4 1 0"
  for m in $order; do
    [ $((SECONDS-t0)) -gt 500 ] && continue
    KT_GEMV_PF=$m timeout 90 $B/kt-bench matmul --threads 16 --formats q4_K,q6_K,q2_K --shapes 7168x2048,2048x7168,1408x2048 --tokens 1 --seconds 0.2 --json 2>>$E/errors.txt | sed "s/^{/{\"mode\":$m,\"round\":$round,/" >> $E/gemv.jsonl
    for s in deepseek-v3 deepseek-v2-lite; do
      KT_GEMV_PF=$m timeout 60 $B/kt-bench moe --shape $s --format q4_k --tokens 1 --threads 16 --seconds 1 --json 2>>$E/errors.txt | sed "s/^{/{\"mode\":$m,\"round\":$round,/" >> $E/moe.jsonl
    done
    log "mode $m round $round"
  done
done
python3 - $E <<'PY' | tee $E/table.txt
import json, sys, collections
E = sys.argv[1]
g = collections.defaultdict(list)
for l in open(E + '/gemv.jsonl'):
    r = json.loads(l)
    if 'skipped' in r: continue
    g[(r['format'], f"{r['rows']}x{r['cols']}")].append((r['mode'], r['round'], r['ms_per_call'] * 1e3, r['weight_gbps'], r['dram_gbps']))
for k, v in g.items():
    print('gemv', k, ' '.join('m%d/r%d %.1fus %.1fGB/s(of %.0f)' % x for x in sorted(v)))
m = collections.defaultdict(list)
for l in open(E + '/moe.jsonl'):
    r = json.loads(l)
    m[r['shape']].append((r['mode'], r['round'], r['ms_per_call'], r['weight_gbps'], r['dram_gbps']))
for k, v in m.items():
    print('moe', k, ' '.join('m%d/r%d %.3fms %.1fGB/s(of %.0f)' % x for x in sorted(v)))
PY
log done
