#!/usr/bin/env bash
# Session 16 call A (branch s16-streams, experiment build): the one-token GEMV's register tiles over 4 / 8 / 16 row
# streams a tile (KT_GEMV_LAYOUT=S: rows i, i+q, ... with q = rows/S) against adjacent rows (0).
# 1) tests with the layouts; 2) probe; 3) kt-bench moe T=1 in-process A/B (KT_GEMV_AB, call by call);
# 4) kt-bench matmul GEMVs, process per layout, two rounds; 5) V2-Lite decode, layouts 0/4 alternating + llama.cpp.
set -uo pipefail
E=$OUT/a; mkdir -p $E/tests; trap 'cd $OUT && tar czf a.tgz a && rm -rf a' EXIT
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s16a/bin.tar.xz -C $B
xz -dc .device-carry/s13f/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/llamacpp-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s16a/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for L in 4 8; do for n in cpu_avx512_kernels matmul_backends moe_correctness; do
  [ $L = 8 ] && [ $n = moe_correctness ] && continue
  KT_GEMV_LAYOUT=$L timeout 60 $B/tests/$n --test-threads 16 > $E/tests/${n}_$L.txt 2>&1; log "test $n layout $L rc $? $(grep -E '^test result' $E/tests/${n}_$L.txt | tail -1)"; done; done
$B/kt-bench machine --threads 16 --json > $E/machine.json 2>&1; log "machine $(cat $E/machine.json | head -c 300)"
for r in 1 2; do for s in deepseek-v3 deepseek-v2-lite; do
  KT_GEMV_AB=0,4,8,16 timeout 90 $B/kt-bench moe --shape $s --format q4_k --tokens 1 --threads 16 --seconds 5 --json >> $E/moe.jsonl 2>>$E/errors.txt; log "moe $s round $r rc $?"; done; done
: > $E/gemv.jsonl
for r in 1 2; do for L in 0 4 8; do
  [ $((SECONDS-t0)) -gt 300 ] && continue
  KT_GEMV_LAYOUT=$L timeout 60 $B/kt-bench matmul --threads 16 --formats q4_K,q6_K,q8_0 --shapes 2048x7168,7168x2048,1408x2048 --tokens 1 --seconds 0.3 --json 2>>$E/errors.txt | sed "s/^{/{\"layout\":$L,\"round\":$r,/" >> $E/gemv.jsonl
  log "gemv layout $L round $r"; done; done
G=/tmp/v2l.gguf
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
timeout 50 $B/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 5 > $E/llama1.out 2> $E/llama1.err; log "llama1 rc $? $(grep -o '"avg_ts":[0-9.]*' $E/llama1.out | tr '\n' ' ')"
for i in 1 2; do for L in 0 4; do
  [ $((SECONDS-t0)) -gt 500 ] && continue
  KT_GEMV_LAYOUT=$L timeout 80 $B/kt-bench decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 5 > $E/dec_${L}_$i.out 2> $E/dec_${L}_$i.err
  log "dec layout $L #$i rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*' $E/dec_${L}_$i.out | head -3 | tr '\n' ' ')"
done; done
rm -f $G
python3 - $E <<'PY' | tee $E/table.txt
import json, sys, collections
E = sys.argv[1]
for l in open(E + '/moe.jsonl'):
    r = json.loads(l)
    print('moe', r['shape'], r.get('prefetch'), '%.4f ms' % r['ms_per_call'], 'w %.1f GB/s' % r['weight_gbps'], 'dram %.1f' % r['dram_gbps'])
g = collections.defaultdict(list)
for l in open(E + '/gemv.jsonl'):
    try: r = json.loads(l)
    except Exception: continue
    if 'skipped' in r: continue
    g[(r['format'], r['rows'], r['cols'])].append((r['layout'], r['round'], r['weight_gbps'], r['dram_gbps']))
for k, v in g.items():
    print('gemv', k, ' '.join('L%d/r%d %.1f(%.0f)' % x for x in v))
PY
log done
