#!/usr/bin/env bash
# Session 17 call C (main at COMMIT, no cuda; s16d = session 16's final kernels): the new Q3_K / Q4_0 / Q5_0 kernels.
# 1) CPU/AMX tests; 2) GEMV/GEMM of q3_k, q4_0, q5_0 with the default (AMX) table against KT_ISA=avx2 (the kernels
# these formats ran before this session; Q5_0's one-token pairs excepted), separate processes taking turns, two rounds,
# and KT_ISA=avx512 once; 3) MoE layers: V3 / V2-Lite Q3_K_M (new preset) at 1 and 512 tokens, V2-Lite q2_k mix (down
# Q4_0) 512 tokens against s16d in separate processes taking turns.
set -uo pipefail
E=$OUT/c; mkdir -p $E/tests; trap 'cd $OUT && tar czf c.tgz c && rm -rf c' EXIT
B=/tmp/kt; mkdir -p $B && tar xJf .device-carry/s17c/bin.tar.xz -C $B
S=/tmp/s16d; mkdir -p $S && tar xJf .device-carry/s16d/bin.tar.xz -C $S
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); kt $(cat .device-carry/s17c/COMMIT); s16d $(cat .device-carry/s16d/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for n in cpu_amx_gemm cpu_avx512_kernels lib_kt_kernels matmul_backends quant_fixtures_small quant_fixtures_kquants moe_correctness moe_api; do
  timeout 90 $B/tests/$n --test-threads 16 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
grep -h -E "FAILED|panicked" $E/tests/*.txt | head -20
mm() { local tag=$1; shift; env "$@" timeout 100 $B/kt-bench matmul --threads 16 --formats q3_k,q4_0,q5_0 --shapes 2048x7168,7168x2048,1408x2048 \
  --tokens 1,16,512 --seconds 0.3 --json 2>>$E/mm.err | sed "s/^{/{\"tag\":\"$tag\",/" >> $E/mm.jsonl; log "matmul $tag rc $?"; }
for r in 1 2; do mm amx KT_X=1; mm avx2 KT_ISA=avx2; done
mm avx512 KT_ISA=avx512
m() { local b=$1; shift; timeout 60 $b moe "$@" --threads 16 --json 2>>$E/moe_err.txt >> $E/moe.jsonl; log "moe $b $* rc $?"; }
m $B/kt-bench --shape deepseek-v3 --format q3_k --tokens 1 --seconds 2
m $B/kt-bench --shape deepseek-v2-lite --format q3_k --tokens 1 --seconds 2
m $B/kt-bench --shape deepseek-v3 --format q3_k --tokens 512 --seconds 1
m $B/kt-bench --shape deepseek-v2-lite --format q3_k --tokens 512 --seconds 1
for r in 1 2; do
  m $B/kt-bench --shape deepseek-v2-lite --format q2_k --tokens 512 --seconds 2
  m $S/kt-bench --shape deepseek-v2-lite --format q2_k --tokens 512 --seconds 2
done
python3 - $E <<'PY' | tee $E/table.txt
import json, sys, collections
E = sys.argv[1]
rows = collections.defaultdict(lambda: collections.defaultdict(list))
peak = {}
for l in open(f'{E}/mm.jsonl'):
    l = l.strip()
    if not l.startswith('{'): continue
    r = json.loads(l)
    rows[(r['format'], r['rows'], r['cols'], r['tokens'])][r['tag']].append(r['ms_per_call'])
    peak[r['tag']] = (r['dram_gbps'], r['peak_gops'])
print('probes', peak)
for k, v in rows.items():
    print('%s %dx%d T=%d' % k, ' | '.join('%s %s' % (t, ' '.join('%.4f' % x for x in xs)) for t, xs in v.items()))
for l in open(E + '/moe.jsonl'):
    r = json.loads(l)
    print('moe', r['shape'], r['gate'], r['down'], 'T=%d' % r['tokens'], r['isa'], '%.3f ms' % r['ms_per_call'], 'w %.1f GB/s' % r['weight_gbps'], 'bwfrac %.3f' % r['bandwidth_fraction'], 'peakfrac %.3f' % r['peak_fraction'], 'dram %.1f' % r['dram_gbps'])
PY
