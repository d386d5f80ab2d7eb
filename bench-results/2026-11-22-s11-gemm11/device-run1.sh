#!/usr/bin/env bash
# gemm11 device script (session 11, issue 2: GEMV fixed costs). new = branch gemm11 (see COMMIT), base =
# s11base (main at cd4ad61), pf2 (below), 16 threads, one process each, interleaved (base new pf2 |
# pf2 new base | base new pf2). Reads only .device-carry/gemm11/ (and ../s11base/kt-bench.xz for the base); writes $OUT/gemm11/.
#  1. pool round trip (`kt-bench pool`): 1 item a thread (new: + `static` = for_each_static), 4 a thread
#  2. GEMV at 1 token, Q4_K/Q6_K/Q2_K, 7168x2048, 2048x7168, 1408x2048, 18432x7168 (x3 rounds), and
#     1408x2048 weights resident (x1 round); also `pf2` = new + the AVX512 GEMV kernel prefetching two
#     register tiles (8 rows) ahead instead of one (pf2.diff), in the same rounds
#  3. gemv-probe (new only, x2 where time is left): the phases of a 16-item GEMV from TSC stamps, variants
#     interleaved call by call in one process
#  4. tests (new): kt-kernels lib cpu:: (the pool's and the driver's), matmul_backends, matmul_no_alloc
# Whole script < 200 s wall (a guard per step, a timeout per process). Summary: $OUT/gemm11/summary.txt.
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
exe() { case $1 in base) echo $B/kt-bench-base;; pf2) echo $B/kt-bench-pf2;; *) echo $B/kt-bench;; esac; }
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
resident() { local v=$1; have $v || return
  timeout 15 $(exe $v) matmul --tokens 1 --formats q4_k,q6_k,q2_k --shapes 1408x2048 --resident \
    --threads $TH --seconds 0.3 --json 2>>$o/err.txt | tagjson $v 1 >> $o/resident.jsonl
  log "resident $v rc ${PIPESTATUS[0]}"; }
probe() { local r=$1
  timeout 30 $B/kt-bench gemv-probe --threads $TH --formats q4_k,q6_k,q2_k --shapes 1408x2048,2048x7168 --calls 1500 \
    > $o/probe$r.txt 2>>$o/err.txt; log "probe $r rc $?"; }
# 1. pool, interleaved
for p in "base 1" "new 1" "new 2" "base 2"; do left 150 && pool $p; done
# 2. GEMV round 1 and 2, the probe between
left 150 && gemv base 1; left 150 && gemv new 1; left 150 && gemv pf2 1
left 150 && probe 1
left 150 && gemv pf2 2; left 150 && gemv new 2; left 150 && gemv base 2
left 160 && resident base; left 160 && resident new; left 160 && resident pf2
# 3. GEMV round 3
left 145 && gemv base 3; left 157 && gemv new 3; left 169 && gemv pf2 3
# 4. tests (new binaries), then a second probe where time is left
for t in kt_kernels_lib matmul_backends matmul_no_alloc; do
  [ -x $B/$t ] || continue; left 182 || { log "test $t skipped"; continue; }
  f=""; [ $t = kt_kernels_lib ] && f="cpu::"
  timeout 15 $B/$t $f --test-threads 16 > $o/test_$t.txt 2>&1
  log "test $t rc $? $(grep -E '^test result' $o/test_$t.txt | tail -1)"; done
left 170 && probe 2
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
for f in ("gemv.jsonl", "resident.jsonl"):
    print(f"== {f}: us per call (% of the process's DRAM probe), run order; mean new vs base")
    d = collections.defaultdict(list)
    for j in rows(f):
        if "ms_per_call" in j: d[(j["format"], f'{j["rows"]}x{j["cols"]}')].append((j["bin"], j["round"], 1e3 * j["ms_per_call"], 100 * j["bandwidth_fraction"], j["dram_gbps"]))
    for k, v in d.items():
        m = {b: st.mean(x[2] for x in v if x[0] == b) for b in ("base", "new", "pf2") if any(x[0] == b for x in v)}
        rel = "".join(f' {b}/base {m[b] / m["base"]:.3f}' for b in ("new", "pf2") if b in m and "base" in m)
        print(*k, " ".join(f"{b}{r}:{us:.1f}({fr:.0f}% of {bw:.0f})" for b, r, us, fr, bw in v) + rel)
PY
cat $o/summary.txt; for r in 1 2; do [ -f $o/probe$r.txt ] && { echo "== probe $r"; cat $o/probe$r.txt; }; done; log done
