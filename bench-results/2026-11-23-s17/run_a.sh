#!/usr/bin/env bash
# Session 17 call A (x17 = main's small-block AMX step kernel + the X_Q8 knob, no cuda; s16d = session 16's final
# kernels, whose Q5_0 tiles of more than one token ran the AVX2 kernel):
# 1) AMX/AVX512 CPU tests of x17; 2) in-process A/B of the Q8_0 / Q5_0 GEMMs (KT_GEMV_AB: 0 = the pipeline's
# small-block step kernel, 1 = session 16's Q8_0 AMX kernel (Q5_0: the pipeline again), 2 = the AVX512 column kernel);
# 3) V2-Lite Q4_K_M 512 MoE layer (down Q5_0), in-process 0 vs 2, and s16d in separate processes taking turns.
set -uo pipefail
E=$OUT/a; mkdir -p $E/tests; trap 'cd $OUT && tar czf a.tgz a && rm -rf a' EXIT
B=/tmp/x17; mkdir -p $B && tar xJf .device-carry/s17a/bin.tar.xz -C $B
S=/tmp/s16d; mkdir -p $S && tar xJf .device-carry/s16d/bin.tar.xz -C $S
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); x17 $(cat .device-carry/s17a/COMMIT); s16d $(cat .device-carry/s16d/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for n in cpu_amx_gemm lib_kt_kernels cpu_avx512_kernels matmul_backends quant_fixtures_small moe_correctness moe_api moe_q4k_amx; do
  timeout 90 $B/tests/$n --test-threads 16 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
grep -h -E "FAILED|panicked" $E/tests/*.txt | head -20
for f in q8_0 q5_0; do
  KT_GEMV_AB=0,1,2 timeout 150 $B/kt-bench matmul --threads 16 --formats $f --shapes 2048x7168,7168x2048,1408x2048,2048x1408,18432x7168 \
    --tokens 16,48,512 --seconds 0.3 --json > $E/mm_$f.jsonl 2> $E/mm_$f.err; log "matmul $f rc $?"
done
m() { local b=$1; shift; timeout 60 $b moe "$@" --threads 16 --json 2>>$E/moe_err.txt >> $E/moe.jsonl; log "moe $b $* rc $?"; }
for r in 1 2; do
  KT_GEMV_AB=0,2 m $B/kt-bench --shape deepseek-v2-lite --format q4_k --tokens 512 --seconds 2
  m $S/kt-bench --shape deepseek-v2-lite --format q4_k --tokens 512 --seconds 2
done
KT_GEMV_AB=0,1,2 m $B/kt-bench --shape deepseek-v2-lite --format q4_k --down-format q8_0 --tokens 512 --seconds 2
KT_GEMV_AB=0,2 m $B/kt-bench --shape deepseek-v2-lite --format q4_k --tokens 64 --seconds 1
python3 - $E <<'PY' | tee $E/table.txt
import json, sys, collections
E = sys.argv[1]
for f in ('q8_0', 'q5_0'):
    rows = collections.defaultdict(dict)
    for l in open(f'{E}/mm_{f}.jsonl'):
        l = l.strip()
        if not l.startswith('{'): continue
        r = json.loads(l)
        rows[(r['rows'], r['cols'], r['tokens'])][r.get('variant', 0)] = (r['ms_per_call'], r['peak_fraction'], r['peak_gops'])
    for k, v in rows.items():
        print(f, '%dx%d T=%d' % k, ' '.join('v%d %.4f ms %.1f%%' % (x, v[x][0], 100 * v[x][1]) for x in sorted(v)), 'peak %.0f' % list(v.values())[0][2])
for l in open(E + '/moe.jsonl'):
    r = json.loads(l)
    print('moe', r['shape'], r['gate'], r['down'], 'T=%d' % r['tokens'], r.get('prefetch'), r['isa'], '%.3f ms' % r['ms_per_call'], 'peakfrac %.3f' % r['peak_fraction'], 'dram %.1f' % r['dram_gbps'])
PY
