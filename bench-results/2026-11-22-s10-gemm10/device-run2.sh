#!/usr/bin/env bash
# gemm10 second device call (session 10): which vCPUs share a physical core? The first call's scaling
# (new binary, AMX GEMM at 512 tokens) ran Q6_K 2048x7168 at 327 ns a step on 1 thread, 607 ns a thread-step
# on 8 (vCPUs 0-7) and 795 on 16, while the VNNI peak per thread fell only 581 -> 442 -> 405 GOP/s: as if
# pairs of vCPUs shared one core's AMX unit (host hyperthreads the guest cannot see: lscpu says 1 thread a core).
# The pool pins worker i to the i-th CPU of the process's affinity mask, so `taskset` picks the vCPUs.
#  1. AMX GEMM at 512 tokens, Q6_K and Q4_K 1408x2048, on 2 threads pinned to vCPUs {0,1}, {0,2}, {0,8},
#     {0,15}; on 8 threads to 0-7, the even vCPUs, 0-3 + 8-11; on 16 (interleaved x2 where time is left)
#  2. the same with KT_ISA=avx512 (VNNI) on 2 threads {0,1} vs {0,8}: do the vector ports share too?
#  3. tests of the final commit (COMMIT2): matmul_backends, matmul_no_alloc, cpu_amx_gemm
# Carry: .device-carry/gemm10. Whole script <= 120 s; results in $OUT/gemm10b.tgz (written at EXIT).
set -uo pipefail
t0=$SECONDS
B=/tmp/gemm10-bin2; mkdir -p $B && tar xJf .device-carry/gemm10/bin2.tar.xz -C $B
o=$OUT/gemm10b; mkdir -p $o
trap 'cd $OUT && tar czf gemm10b.tgz gemm10b' EXIT
left() { [ $((SECONDS - t0)) -lt $1 ]; }
log() { echo "$* (at $((SECONDS - t0)) s)" | tee -a $o/log.txt; }
cat .device-carry/gemm10/COMMIT2 >> $o/log.txt 2>/dev/null
for c in 0 1 8; do for f in thread_siblings_list core_id physical_package_id; do
  echo "cpu$c $f $(cat /sys/devices/system/cpu/cpu$c/topology/$f 2>/dev/null)" >> $o/log.txt; done; done
pin() { local set=$1 th=$2 tag=$3 lim=$4; shift 4
  timeout $lim taskset -c $set $B/kt-bench matmul --tokens 512 --formats q6_k,q4_k --shapes 1408x2048 \
    --threads $th --seconds 0.2 --json "$@" 2>>$o/err.txt \
    | sed "s/^{/{\"cpus\":\"$set\",\"tag\":\"$tag\",/" >> $o/pin.jsonl
  log "$tag cpus $set threads $th rc ${PIPESTATUS[0]}"; }
for r in 1 2; do
  for s in 0,1 0,2 0,8 0,15; do left 70 || continue; pin $s 2 amx 10; done
  for s in 0-7 0,2,4,6,8,10,12,14 0-3,8-11; do left 80 || continue; pin $s 8 amx 8; done
  left 85 && pin 0-15 16 amx 8
done
for s in 0,1 0,8; do left 95 || continue; KT_ISA=avx512 pin $s 2 avx512 10; done
# GEMV floor: 1408x2048 at 1 token with the weights resident (1.6 MB: in the L2s), against streamed.
for res in --resident "" --resident; do left 100 || continue
  timeout 8 $B/kt-bench matmul --tokens 1 --formats q4_k,q6_k --shapes 1408x2048 --threads 16 --seconds 0.3 --json $res \
    2>>$o/err.txt >> $o/gemv.jsonl; log "gemv $res rc $?"; done
for t in matmul_backends matmul_no_alloc cpu_amx_gemm; do left 108 || { log "test $t skipped"; continue; }
  KT_TEST_FIXTURES=kt-kernels/tests/fixtures timeout 14 $B/$t --test-threads 16 > $o/test_$t.txt 2>&1
  log "test $t rc $? $(grep -E '^test result' $o/test_$t.txt | tail -1)"; done
python3 - "$o" <<'PY' > $o/summary.txt 2>&1
import json, sys, collections
rows = collections.defaultdict(list)
for l in open(f"{sys.argv[1]}/pin.jsonl"):
    j = json.loads(l)
    if "ms_per_call" not in j: continue
    rows[(j["format"], j["tag"], j["threads"])].append((j["cpus"], round(j["ms_per_call"], 3), round(j["peak_gops"])))
print("== ms_per_call (peak GOP/s of the process) by pinning, in run order")
for k, v in rows.items(): print(*k, " ".join(f"[{c}]:{ms}({p})" for c, ms, p in v))
PY
grep '^{' $o/gemv.jsonl | python3 -c "
import sys, json
for l in sys.stdin:
    j = json.loads(l); print('gemv', j['format'], 'resident' if j['resident'] else 'streamed', round(1000 * j['ms_per_call'], 2), 'us')
" >> $o/summary.txt 2>&1
cat $o/summary.txt; log done
