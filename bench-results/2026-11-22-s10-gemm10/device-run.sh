#!/usr/bin/env bash
# gemm10 device call (session 10): new = branch gemm10 (COMMIT) vs s10base (main at 7d522c4), 16 threads,
# interleaved (base first in round 1, new first in round 2, base first in round 3 where time is left).
#  1. GEMV at 1 token, 1408x2048, K-quants (new: one item a thread below a 160 KB share; the f32
#     activations quantized inside the job while the other threads prefetch their item's first 4 KB)
#  2. GEMM at 512 tokens, Q4_K and Q6_K, four shapes (new: AMX items' range bounds shift with the token
#     block, so 1408x2048 gives every thread 22 blocks instead of 20 or 24; the other shapes divide evenly
#     and are unchanged: a control for the instance's drift)
#  3. tests: cpu_amx_gemm, matmul_backends, matmul_no_alloc, cpu_avx512_kernels, cpu_avx2_kernels
#     (KT_TEST_FIXTURES=kt-kernels/tests/fixtures: the repository's copy)
#  4. diagnostics (new binary only): the AMX GEMM at 512 tokens on 1, 8 and 16 threads (does a thread's
#     step cost grow with the threads? dev VM 1 thread: ~0.3 us a Q6_K step, device 16 threads ~0.78),
#     Q6_K at 512 tokens with KT_ISA=avx512 (VNNI) against AMX
#  5. a third GEMV / GEMM round if time is left
# Carry: .device-carry/gemm10 and .device-carry/s10base. Whole script <= 150 s (a guard per step, a
# timeout per sub-run); results in $OUT/gemm10.tgz (written at EXIT; every step appends to its own file).
set -uo pipefail
t0=$SECONDS
B=/tmp/gemm10-bin; mkdir -p $B && tar xJf .device-carry/gemm10/bin.tar.xz -C $B
cp .device-carry/s10base/kt-bench $B/kt-bench-base
o=$OUT/gemm10; mkdir -p $o
trap 'cd $OUT && tar czf gemm10.tgz gemm10' EXIT
left() { [ $((SECONDS - t0)) -lt $1 ]; }
log() { echo "$* (at $((SECONDS - t0)) s)" | tee -a $o/log.txt; }
nproc >> $o/log.txt; lscpu | grep -E "Model name|Thread|Core|Socket|MHz|L2|L3|NUMA" >> $o/log.txt
cat .device-carry/gemm10/COMMIT >> $o/log.txt 2>/dev/null
exe() { case $1 in base) echo $B/kt-bench-base;; *) echo $B/kt-bench;; esac; }
mm() { local v=$1 tag=$2 lim=$3 th=$4; shift 4
  timeout $lim $(exe $v) matmul "$@" --threads $th --json 2>>$o/err.txt \
    | sed "s/^{/{\"bin\":\"$v\",\"tag\":\"$tag\",\"threads\":$th,/" >> $o/$tag.jsonl
  log "$tag $v threads $th rc ${PIPESTATUS[0]}"; }
SH=7168x2048,2048x7168,1408x2048,18432x7168
gemv() { mm $1 t1 12 16 --tokens 1 --formats q4_k,q5_k,q2_k,q6_k --shapes 1408x2048 --seconds 0.3; }
gemm() { mm $1 t512 16 16 --tokens 512 --formats q4_k,q6_k --shapes $SH --seconds 0.2; }
# 1. GEMV, interleaved x2.
for v in base new new base; do left 30 || continue; gemv $v; done
# 2. GEMM at 512 tokens, interleaved x2.
for v in base new new base; do left 62 || continue; gemm $v; done
# 3. tests (the new binaries).
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for t in cpu_amx_gemm matmul_backends matmul_no_alloc cpu_avx512_kernels cpu_avx2_kernels; do left 95 || { log "test $t skipped"; continue; }
  timeout 30 $B/$t --test-threads 16 > $o/test_$t.txt 2>&1
  log "test $t rc $? $(grep -E '^test result' $o/test_$t.txt | tail -1)"; done
# 4. diagnostics, new binary: thread scaling of the AMX GEMM, then Q6_K on AVX512-VNNI.
for th in 1 8 16; do left 110 || continue
  mm new scale $([ $th = 1 ] && echo 20 || echo 10) $th --tokens 512 --formats q4_k,q6_k --shapes 1408x2048,2048x7168 --seconds 0.2; done
left 118 && { KT_ISA=avx512 timeout 8 $B/kt-bench matmul --tokens 512 --formats q6_k --shapes 1408x2048,2048x7168 \
  --threads 16 --seconds 0.2 --json 2>>$o/err.txt | sed 's/^{/{"bin":"new-avx512","tag":"isa","threads":16,/' >> $o/isa.jsonl; log "isa avx512 rc $?"; }
# 5. a third round where time is left.
left 106 && gemm base; left 114 && gemm new
left 126 && gemv base; left 134 && gemv new
python3 - "$o" <<'PY' > $o/summary.txt 2>&1
import json, sys, collections
o = sys.argv[1]
for tag in ("t1", "t512", "scale", "isa"):
    rows = collections.defaultdict(list)
    try:
        for l in open(f"{o}/{tag}.jsonl"):
            j = json.loads(l)
            if "ms_per_call" not in j: continue
            frac = j["bandwidth_fraction"] if tag == "t1" else j["peak_fraction"]
            den = j["dram_gbps"] if tag == "t1" else j["peak_gops"]
            b = j["bin"] + (f'/{j["threads"]}t' if tag == "scale" else "")
            rows[(j["format"], f'{j["rows"]}x{j["cols"]}')].append((b, round(j["ms_per_call"], 4), round(100 * frac), round(den)))
    except Exception as e: print(tag, "error", e)
    print(f"== {tag}: ms_per_call (% of {'DRAM bw' if tag == 't1' else 'int8 peak'}, denominator) in run order")
    for k, v in rows.items(): print(*k, " ".join(f"{b}:{ms}({f}% of {d})" for b, ms, f, d in v))
PY
cat $o/summary.txt; log done
