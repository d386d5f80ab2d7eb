#!/usr/bin/env bash
# gemm9 device call (session 9): new = branch gemm9 (COMMIT) vs s9base (main at c6bb6aa), 16 threads,
# interleaved x2 (base first in round 1, new first in round 2).
#  - GEMM at 512 tokens, Q4_K/Q5_K/Q6_K, four shapes (issue 2's >= 50% of the int8 peak; the
#    peak probe is now the best of 5 passes after a warm-up: compare new's peak_gops spread to base's)
#  - GEMV at 1 token, 1408x2048, K-quants (GEMV items on one shared counter)
#  - Q4_K at 16 tokens, four shapes (records pass cut into super-block runs)
#  - the pool's per-job cost (kt-bench pool: for_each vs for_each_in_order at 1 and 2 items a thread)
#  - tests: cpu_amx_gemm, matmul_backends, matmul_no_alloc, cpu_avx512_kernels, cpu_avx2_kernels
# Carry: .device-carry/gemm9 and .device-carry/s9base. Whole script <= 200 s (a guard per step,
# a timeout per sub-run); results in $OUT/gemm9.tgz (written at EXIT).
set -uo pipefail
t0=$SECONDS
B=/tmp/gemm9-bin; mkdir -p $B && tar xJf .device-carry/gemm9/bin.tar.xz -C $B
cp .device-carry/s9base/kt-bench $B/kt-bench-base
o=$OUT/gemm9; mkdir -p $o
trap 'cd $OUT && tar czf gemm9.tgz gemm9' EXIT
left() { [ $((SECONDS - t0)) -lt $1 ]; }
log() { echo "$* (at $((SECONDS - t0)) s)" | tee -a $o/log.txt; }
nproc >> $o/log.txt; lscpu | grep -E "Model name|Thread|Core|Socket|MHz|L2|L3" >> $o/log.txt
cat .device-carry/gemm9/COMMIT >> $o/log.txt 2>/dev/null
exe() { case $1 in base) echo $B/kt-bench-base;; *) echo $B/kt-bench;; esac; }
mm() { local v=$1 tag=$2 lim=$3; shift 3
  timeout $lim $(exe $v) matmul "$@" --threads 16 --json 2>>$o/err.txt \
    | sed "s/^{/{\"bin\":\"$v\",\"tag\":\"$tag\",/" >> $o/$tag.jsonl
  log "$tag $v rc ${PIPESTATUS[0]}"; }
SH=7168x2048,2048x7168,1408x2048,18432x7168
# 1. pool per-job cost (pool code unchanged: one binary), 1 and 2 items a thread (a GEMV's).
for ipt in 1 2 4; do left 20 || continue
  timeout 8 $B/kt-bench pool --threads 16 --items-per-thread $ipt --item-floats 0,2048,8192 --jobs 20000 --json \
    >> $o/pool.jsonl 2>>$o/err.txt; log "pool ipt $ipt rc $?"; done
# 2. GEMV 1408x2048 at 1 token, interleaved x2.
for i in 1 2; do for v in $([ $i = 1 ] && echo base new || echo new base); do left 50 || continue
  mm $v t1 12 --tokens 1 --formats q4_k,q5_k,q2_k,q6_k --shapes 1408x2048 --seconds 0.3; done; done
# 3. Q4_K at 16 tokens, interleaved x2.
for i in 1 2; do for v in $([ $i = 1 ] && echo base new || echo new base); do left 80 || continue
  mm $v t16 14 --tokens 16 --formats q4_k --shapes $SH --seconds 0.2; done; done
# 4. tests (before the GEMM: correctness first).
for t in cpu_amx_gemm matmul_backends matmul_no_alloc cpu_avx512_kernels cpu_avx2_kernels; do left 100 || { log "test $t skipped"; continue; }
  timeout 35 $B/$t --test-threads 16 > $o/test_$t.txt 2>&1
  log "test $t rc $? $(grep -E '^test result' $o/test_$t.txt | tail -1)"; done
# 5. GEMM at 512 tokens, interleaved x2.
for i in 1 2; do for v in $([ $i = 1 ] && echo base new || echo new base); do left 172 || continue
  mm $v t512 22 --tokens 512 --formats q4_k,q5_k,q6_k --shapes $SH --seconds 0.2; done; done
python3 - "$o" <<'PY' > $o/summary.txt 2>&1
import json, sys, collections
o = sys.argv[1]
for tag in ("t1", "t16", "t512"):
    rows = collections.defaultdict(list)
    try:
        for l in open(f"{o}/{tag}.jsonl"):
            j = json.loads(l)
            if "ms_per_call" not in j: continue
            frac = j["bandwidth_fraction"] if tag == "t1" else j["peak_fraction"]
            den = j["dram_gbps"] if tag == "t1" else j["peak_gops"]
            rows[(j["format"], f'{j["rows"]}x{j["cols"]}')].append((j["bin"], round(j["ms_per_call"], 4), round(100 * frac), round(den)))
    except Exception as e: print(tag, "error", e)
    print(f"== {tag}: ms_per_call (% of {'DRAM bw' if tag == 't1' else 'int8 peak'}, denominator) in run order")
    for k, v in rows.items(): print(*k, " ".join(f"{b}:{ms}({f}% of {d})" for b, ms, f, d in v))
try:
    print("== pool (us per job)")
    for l in open(f"{o}/pool.jsonl"):
        if l.startswith("{"): print(l.strip())
except Exception as e: print("pool error", e)
PY
cat $o/summary.txt; log done
