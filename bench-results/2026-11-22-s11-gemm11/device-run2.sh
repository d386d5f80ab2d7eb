#!/usr/bin/env bash
# gemm11 device script, second call (session 11, issue 2). new = branch gemm11 (see COMMIT): the static
# one-item-a-thread GEMV hand-out of the first call, the job pointer back on its own line, and a faster
# AVX512 Q8_K activation quantizer (the 16 block sums in one reduction tree). base = s11base (main at
# cd4ad61). 16 threads, one process each, interleaved. Reads .device-carry/gemm11/ (and
# ../s11base/kt-bench.xz for the base); writes $OUT/gemm11/.
#  1. pool round trip (`kt-bench pool`), 1 and 4 items a thread, base new new base
#  2. gemv-probe (new): TSC phases; `quant` = the caller's quantize (first call: 1.3-2.1 us at 2048
#     columns with the old quantizer), `static_rf` (post first, flag), `quant_priv` (private buffer)
#  3. GEMV at 1 token, Q4_K/Q6_K/Q2_K, 7168x2048, 2048x7168, 1408x2048, 18432x7168: base new | new base |
#     base new
#  4. MoE at 1 token (V2-Lite shape, Q4_K; the quantizer runs once per call there), base new new base
#  5. tests (new): kt-kernels lib cpu::, matmul_backends, matmul_no_alloc, cpu_avx512_kernels (the quantizer
#     against ggml's bytes and the scalar path), cpu_amx_gemm
# Whole script < 200 s wall. Summary: $OUT/gemm11/summary.txt.
set -uo pipefail
TH=${GEMM11_THREADS:-16}   # 16 on the device; fewer only to try the script on the dev VM
D=$(cd "$(dirname "$0")" && pwd)
t0=$SECONDS
o=$OUT/gemm11; mkdir -p $o
B=/tmp/gemm11-bin; mkdir -p $B
for f in $D/*.xz; do n=$(basename $f .xz); xz -dc $f > $B/$n && chmod +x $B/$n; done
if [ -f $D/../s11base/kt-bench.xz ]; then xz -dc $D/../s11base/kt-bench.xz > $B/kt-bench-base && chmod +x $B/kt-bench-base; fi
left() { [ $((SECONDS - t0)) -lt $1 ]; }
log() { echo "$* (at $((SECONDS - t0)) s)" | tee -a $o/log.txt; }
{ nproc; lscpu | grep -E "Model name|Thread|Core|Socket|MHz|L2|L3|NUMA"; cat $D/COMMIT; } >> $o/log.txt 2>&1
exe() { case $1 in base) echo $B/kt-bench-base;; *) echo $B/kt-bench;; esac; }
have() { [ -x "$(exe $1)" ] || { log "no binary for $1"; return 1; }; }
tagjson() { sed "s/^{/{\"bin\":\"$1\",\"round\":$2,/"; }
pool() { local v=$1 r=$2; have $v || return
  timeout 20 $(exe $v) pool --threads $TH --items-per-thread 1 --item-floats 0,2048,8192 --jobs 20000 --json 2>>$o/err.txt | tagjson $v $r >> $o/pool1.jsonl
  timeout 20 $(exe $v) pool --threads $TH --items-per-thread 4 --item-floats 0,2048 --jobs 10000 --json 2>>$o/err.txt | tagjson $v $r >> $o/pool4.jsonl
  log "pool $v round $r"; }
gemv() { local v=$1 r=$2; have $v || return
  timeout 40 $(exe $v) matmul --tokens 1 --formats q4_k,q6_k,q2_k --shapes 7168x2048,2048x7168,1408x2048,18432x7168 \
    --threads $TH --seconds 0.2 --json 2>>$o/err.txt | tagjson $v $r >> $o/gemv.jsonl
  log "gemv $v round $r rc ${PIPESTATUS[0]}"; }
moe() { local v=$1 r=$2; have $v || return
  for sh in deepseek-v2-lite; do
    timeout 25 $(exe $v) moe --shape $sh --format q4_k --tokens 1 --threads $TH --seconds 0.5 --json 2>>$o/err.txt \
      | tagjson $v $r >> $o/moe.jsonl; done
  log "moe $v round $r"; }
probe() { local r=$1
  timeout 35 $B/kt-bench gemv-probe --threads $TH --formats q4_k,q6_k,q2_k --shapes 1408x2048,2048x7168 --calls 1500 \
    > $o/probe$r.txt 2>>$o/err.txt; log "probe $r rc $?"; }
for p in "base 1" "new 1" "new 2" "base 2"; do left 150 && pool $p; done
left 150 && probe 1
left 150 && gemv base 1; left 150 && gemv new 1
left 150 && gemv new 2; left 150 && gemv base 2
left 140 && gemv base 3; left 152 && gemv new 3
for p in "base 1" "new 1" "new 2" "base 2"; do left 165 && moe $p; done
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for t in kt_kernels_lib matmul_backends matmul_no_alloc cpu_avx512_kernels cpu_amx_gemm; do
  [ -x $B/$t ] || continue; left 182 || { log "test $t skipped"; continue; }
  f=""; [ $t = kt_kernels_lib ] && f="cpu::"
  timeout 15 $B/$t $f --test-threads 16 > $o/test_$t.txt 2>&1
  log "test $t rc $? $(grep -E '^test result' $o/test_$t.txt | tail -1)"; done
left 172 && probe 2
python3 - "$o" <<'PY' > $o/summary.txt 2>&1
import json, sys, collections, statistics as st
o = sys.argv[1]
def rows(f):
    try: return [json.loads(l) for l in open(f"{o}/{f}") if l.startswith("{")]
    except FileNotFoundError: return []
for f in ("pool1.jsonl", "pool4.jsonl"):
    print(f"== {f}: us per job, bin/round: for_each / in_order / static")
    d = collections.defaultdict(list)
    for j in rows(f):
        s = j.get("kt_static_us"); s = "-" if s is None else f"{s:.2f}"
        d[(j["items"], j["item_floats"])].append(f'{j["bin"]}{j["round"]}: {j["kt_pool_us"]:.2f} / {j["kt_in_order_us"]:.2f} / {s}')
    for k, v in d.items(): print(f"items {k[0]} floats {k[1]}:", " | ".join(v))
print("== gemv.jsonl: us per call (% of the process's DRAM probe), run order; mean new vs base")
d = collections.defaultdict(list)
for j in rows("gemv.jsonl"):
    if "ms_per_call" in j: d[(j["format"], f'{j["rows"]}x{j["cols"]}')].append((j["bin"], j["round"], 1e3 * j["ms_per_call"], 100 * j["bandwidth_fraction"], j["dram_gbps"]))
for k, v in d.items():
    m = {b: st.mean(x[2] for x in v if x[0] == b) for b in ("base", "new") if any(x[0] == b for x in v)}
    rel = f' new/base {m["new"] / m["base"]:.3f}' if len(m) == 2 else ""
    print(*k, " ".join(f"{b}{r}:{us:.1f}({fr:.0f}% of {bw:.0f})" for b, r, us, fr, bw in v) + rel)
print("== moe.jsonl: ms per call (% of the process's DRAM probe), run order")
print(" ".join(f'{j["bin"]}{j["round"]} {j["shape"]}: {j["ms_per_call"]:.4f} ({100 * j["bandwidth_fraction"]:.0f}% of {j["dram_gbps"]:.0f})' for j in rows("moe.jsonl") if "ms_per_call" in j))
PY
cat $o/summary.txt; for r in 1 2; do [ -f $o/probe$r.txt ] && { echo "== probe $r"; cat $o/probe$r.txt; }; done; log done
