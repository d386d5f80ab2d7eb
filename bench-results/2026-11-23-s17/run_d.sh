#!/usr/bin/env bash
# Session 17 call D (main at COMMIT = s17d: the AMX Q3_K step kernel; s17c = call C's build, Q3_K on the AVX512
# column kernel at many tokens): 1) CPU/AMX tests; 2) Q3_K GEMM 16 / 128 / 512 tokens, s17d against s17c in separate
# processes taking turns (two rounds); 3) V3 / V2-Lite Q3_K_M MoE layer at 512 tokens (and V3 at 16 x 8 = 128), the
# two binaries taking turns, two rounds.
set -uo pipefail
E=$OUT/d; mkdir -p $E/tests; trap 'cd $OUT && tar czf d.tgz d && rm -rf d' EXIT
B=/tmp/kt; mkdir -p $B && tar xJf .device-carry/s17d/bin.tar.xz -C $B
C=/tmp/s17c; mkdir -p $C && tar xJf .device-carry/s17c/bin.tar.xz -C $C
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); new $(cat .device-carry/s17d/COMMIT); old $(cat .device-carry/s17c/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for n in cpu_amx_gemm lib_kt_kernels cpu_avx512_kernels matmul_backends moe_correctness moe_api moe_q4k_amx; do
  timeout 90 $B/tests/$n --test-threads 16 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
grep -h -E "FAILED|panicked" $E/tests/*.txt | head -20
mm() { local tag=$1 b=$2; timeout 60 $b matmul --threads 16 --formats q3_k --shapes 2048x7168,7168x2048,1408x2048,18432x7168 \
  --tokens 16,128,512 --seconds 0.3 --json 2>>$E/mm.err | sed "s/^{/{\"tag\":\"$tag\",/" >> $E/mm.jsonl; log "matmul $tag rc $?"; }
for r in 1 2; do mm new $B/kt-bench; mm old $C/kt-bench; done
m() { local tag=$1 b=$2; shift 2; timeout 60 $b moe "$@" --threads 16 --json 2>>$E/moe_err.txt | sed "s/^{/{\"tag\":\"$tag\",/" >> $E/moe.jsonl; log "moe $tag $* rc $?"; }
for r in 1 2; do
  m new $B/kt-bench --shape deepseek-v3 --format q3_k --tokens 512 --seconds 1
  m old $C/kt-bench --shape deepseek-v3 --format q3_k --tokens 512 --seconds 1
  m new $B/kt-bench --shape deepseek-v2-lite --format q3_k --tokens 512 --seconds 1
  m old $C/kt-bench --shape deepseek-v2-lite --format q3_k --tokens 512 --seconds 1
done
m new $B/kt-bench --shape deepseek-v3 --format q4_k --tokens 512 --seconds 1
python3 - $E <<'PY' | tee $E/table.txt
import json, sys, collections
E = sys.argv[1]
rows = collections.defaultdict(lambda: collections.defaultdict(list))
for l in open(f'{E}/mm.jsonl'):
    l = l.strip()
    if not l.startswith('{'): continue
    r = json.loads(l)
    rows[(r['format'], r['rows'], r['cols'], r['tokens'])][r['tag']].append((r['ms_per_call'], r['peak_fraction']))
for k, v in rows.items():
    print('%s %dx%d T=%d' % k, ' | '.join('%s %s' % (t, ' '.join('%.4f (%.0f%%)' % (x, 100 * f) for x, f in xs)) for t, xs in v.items()))
for l in open(E + '/moe.jsonl'):
    r = json.loads(l)
    print('moe', r['tag'], r['shape'], r['gate'], r['down'], 'T=%d' % r['tokens'], r['isa'], '%.3f ms' % r['ms_per_call'], 'peakfrac %.3f' % r['peak_fraction'], 'dram %.1f' % r['dram_gbps'])
PY
