#!/usr/bin/env bash
# Session 17 call E (main at COMMIT = s17e: Q4_1 / Q5_1 on AVX512 and AMX; s16d = session 16's final kernels): 1) CPU/AMX
# tests; 2) Q4_1 / Q5_1 GEMV/GEMM with the default (AMX) table against KT_ISA=avx2 (their kernels before this session),
# separate processes taking turns, two rounds; 3) V2-Lite q5_k mix (down Q5_1) MoE layer at 512 and 1 tokens, s17e
# against s16d taking turns, two rounds; V2-Lite Q4_K_M and q2_k mix 1 token as a check that the one-token path held.
set -uo pipefail
E=$OUT/e; mkdir -p $E/tests; trap 'cd $OUT && tar czf e.tgz e && rm -rf e' EXIT
B=/tmp/kt; mkdir -p $B && tar xJf .device-carry/s17e/bin.tar.xz -C $B
S=/tmp/s16d; mkdir -p $S && tar xJf .device-carry/s16d/bin.tar.xz -C $S
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); new $(cat .device-carry/s17e/COMMIT); s16d $(cat .device-carry/s16d/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for n in cpu_amx_gemm cpu_avx512_kernels lib_kt_kernels matmul_backends moe_correctness moe_api; do
  timeout 90 $B/tests/$n --test-threads 16 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
grep -h -E "FAILED|panicked|tol " $E/tests/*.txt | head -20
mm() { local tag=$1; shift; env "$@" timeout 60 $B/kt-bench matmul --threads 16 --formats q4_1,q5_1 --shapes 2048x7168,2048x1408 \
  --tokens 1,16,512 --seconds 0.3 --json 2>>$E/mm.err | sed "s/^{/{\"tag\":\"$tag\",/" >> $E/mm.jsonl; log "matmul $tag rc $?"; }
for r in 1 2; do mm amx KT_X=1; mm avx2 KT_ISA=avx2; done
m() { local tag=$1 b=$2; shift 2; timeout 60 $b moe "$@" --threads 16 --json 2>>$E/moe_err.txt | sed "s/^{/{\"tag\":\"$tag\",/" >> $E/moe.jsonl; log "moe $tag $* rc $?"; }
for r in 1 2; do
  m new $B/kt-bench --shape deepseek-v2-lite --format q5_k --tokens 512 --seconds 1
  m s16d $S/kt-bench --shape deepseek-v2-lite --format q5_k --tokens 512 --seconds 1
  m new $B/kt-bench --shape deepseek-v2-lite --format q5_k --tokens 1 --seconds 1
  m s16d $S/kt-bench --shape deepseek-v2-lite --format q5_k --tokens 1 --seconds 1
  m new $B/kt-bench --shape deepseek-v2-lite --format q4_k --tokens 1 --seconds 1
  m s16d $S/kt-bench --shape deepseek-v2-lite --format q4_k --tokens 1 --seconds 1
done
python3 - $E <<'PY' | tee $E/table.txt
import json, sys, collections
E = sys.argv[1]
rows = collections.defaultdict(lambda: collections.defaultdict(list))
for l in open(f'{E}/mm.jsonl'):
    l = l.strip()
    if not l.startswith('{'): continue
    r = json.loads(l)
    rows[(r['format'], r['rows'], r['cols'], r['tokens'])][r['tag']].append(r['ms_per_call'])
for k, v in rows.items():
    print('%s %dx%d T=%d' % k, ' | '.join('%s %s' % (t, ' '.join('%.4f' % x for x in xs)) for t, xs in v.items()))
for l in open(E + '/moe.jsonl'):
    r = json.loads(l)
    print('moe', r['tag'], r['shape'], r['gate'], r['down'], 'T=%d' % r['tokens'], r['isa'], '%.3f ms' % r['ms_per_call'], 'bwfrac %.3f' % r['bandwidth_fraction'], 'dram %.1f' % r['dram_gbps'])
PY
