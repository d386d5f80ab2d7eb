#!/usr/bin/env bash
# gemm12 device script, second call (session 12, issue 2). new = branch gemm12 (COMMIT): the Q6_K AMX step with
# sc*q split into its low byte (tdpbusd) and high byte (tdpbssd) (8 tile products, 12 tile loads, 2 C stores a
# step; was 12 / 16 / 3), Q6_K on AMX from 12 tokens (was 64), and the GEMV of one item a thread posting its job
# first while item 0 quantizes (gemm11's static_rf as library code). t9 / t16 = new with Q6_K's AMX threshold at
# 9 / 16 tokens (which side of 9-15 tokens AMX wins). base = s12base (main 54a8a0b). 16 threads, one process per
# binary, interleaved.
#  1. GEMM at 512 tokens, q6_k,q4_k (q4_k: unchanged code, the instance's drift), 4 shapes: base new | new base |
#     base new
#  2. tests (new): kt_kernels lib cpu::, cpu_amx_gemm, matmul_backends, matmul_no_alloc, cpu_avx512_kernels,
#     moe_correctness, moe_api (KT_TEST_FIXTURES=kt-kernels/tests/fixtures)
#  3. Q6_K threshold: tokens 9,10,12,14,16,24 on 7168x2048, 2048x7168, 1408x2048: t9 t16 | t16 t9
#  4. MoE layer with Q6_K down projections (llama.cpp Q4_K_M's "more bits" layers; V3 ~16 tokens an expert at
#     512): `moe --shape deepseek-v3 --format q4_k --down-format q6_k --tokens 512`: base new | new base
#     (V2-Lite's down, K = 1408, cannot be Q6_K)
#  5. GEMV at 1 token, q4_k,q6_k,q2_k, 1408x2048: base new | new base | base new, and gemv-probe (new) x2
#  6. 1 thread, Q6_K and Q4_K at 512 on 2048x7168 (per-step cost without AMX sharing): new base
# Reads only .device-carry/gemm12/ (+ ../s12base/kt-bench.xz); writes $OUT/gemm12/ (summary.txt first).
# Whole script < 200 s wall (a guard per step, a timeout per process).
set -uo pipefail
TH=${GEMM12_THREADS:-16}   # 16 on the device; fewer only to try the script on the dev VM
D=$(cd "$(dirname "$0")" && pwd)
t0=$SECONDS
o=$OUT/gemm12; mkdir -p $o
B=/tmp/gemm12-bin2; mkdir -p $B
tar xJf $D/bin2.tar.xz -C $B
if [ -f $D/../s12base/kt-bench.xz ]; then xz -dc $D/../s12base/kt-bench.xz > $B/kt-bench-base && chmod +x $B/kt-bench-base; fi
left() { [ $((SECONDS - t0)) -lt $1 ]; }
log() { echo "$* (at $((SECONDS - t0)) s)" | tee -a $o/log.txt; }
{ nproc; lscpu | grep -E "Model name|Thread|Core|Socket|MHz|L2|L3|NUMA"; cat $D/COMMIT2; } >> $o/log.txt 2>&1
exe() { case $1 in base) echo $B/kt-bench-base;; t9|t16) echo $B/kt-bench-$1;; *) echo $B/kt-bench;; esac; }
have() { [ -x "$(exe $1)" ] || { log "no binary for $1"; return 1; }; }
tagjson() { sed "s/^{/{\"bin\":\"$1\",\"round\":$2,/"; }
mm() { local v=$1 r=$2 tag=$3 lim=$4; shift 4; have $v || return
  timeout $lim $(exe $v) matmul "$@" --json 2>>$o/err.txt | tagjson $v $r >> $o/$tag.jsonl
  log "$tag $v round $r rc ${PIPESTATUS[0]}"; }
# GEMM12_*: smaller shapes, only to try the script on the dev VM.
SH=${GEMM12_SH:-7168x2048,2048x7168,1408x2048,18432x7168}
SHT=${GEMM12_SHT:-7168x2048,2048x7168,1408x2048}
SH1=${GEMM12_SH1:-1408x2048}
SHS=${GEMM12_SHS:-2048x7168}
MOE=${GEMM12_MOE-deepseek-v3}
gemm() { mm $1 $2 t512 25 --tokens 512 --formats q6_k,q4_k --shapes $SH --threads $TH --seconds 0.2; }
thr() { mm $1 $2 thr 20 --tokens 9,10,12,14,16,24 --formats q6_k --shapes $SHT --threads $TH --seconds 0.1; }
gemv() { mm $1 $2 t1 15 --tokens 1 --formats q4_k,q6_k,q2_k --shapes $SH1 --threads $TH --seconds 0.2; }
one() { mm $1 $2 one 25 --tokens 512 --formats q6_k,q4_k --shapes $SHS --threads 1 --seconds 0.1; }
moe() { local v=$1 r=$2; have $v || return
  for sh in $MOE; do
    timeout 25 $(exe $v) moe --shape $sh --format q4_k --down-format q6_k --tokens 512 --threads $TH --seconds 1 --json \
      2>>$o/err.txt | tagjson $v $r >> $o/moe.jsonl
    log "moe $sh $v round $r rc ${PIPESTATUS[0]}"; done; }
probe() { local r=$1
  timeout 20 $B/kt-bench gemv-probe --threads $TH --formats q4_k,q6_k,q2_k --shapes $SH1 --calls ${GEMM12_CALLS:-1000} \
    > $o/probe$r.txt 2>>$o/err.txt; log "probe $r rc $?"; }
# 1. GEMM at 512, interleaved x3
for p in "base 1" "new 1" "new 2" "base 2" "base 3" "new 3"; do left 45 && gemm $p; done
# 2. tests (new binaries)
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for t in kt_kernels cpu_amx_gemm matmul_backends matmul_no_alloc cpu_avx512_kernels moe_correctness moe_api; do
  [ -x $B/$t ] || continue; left 110 || { log "test $t skipped"; continue; }
  f=""; [ $t = kt_kernels ] && f="cpu::"
  timeout 25 $B/$t $f --test-threads 16 > $o/test_$t.txt 2>&1
  log "test $t rc $? $(grep -E '^test result' $o/test_$t.txt | tail -1)"; done
# 3. threshold
for p in "t9 1" "t16 1" "t16 2" "t9 2"; do left 125 && thr $p; done
# 4. MoE with Q6_K downs
for p in "base 1" "new 1" "new 2" "base 2"; do left 145 && moe $p; done
# 5. GEMV and the probe
for p in "base 1" "new 1"; do left 160 && gemv $p; done
left 160 && probe 1
for p in "new 2" "base 2" "base 3" "new 3"; do left 170 && gemv $p; done
left 172 && probe 2
# 6. one thread
for p in "new 1" "base 1"; do left 178 && one $p; done
python3 - "$o" <<'PY' > $o/summary.txt 2>&1
import json, sys, collections, statistics as st
o = sys.argv[1]
def rows(f):
    try: return [json.loads(l) for l in open(f"{o}/{f}") if l.startswith("{") and "ms_per_call" in l]
    except FileNotFoundError: return []
BINS = ("base", "new", "t9", "t16")
def table(f, title, key, unit_us):
    print(f"== {f}: {title}")
    d = collections.defaultdict(list)
    for j in rows(f): d[key(j)].append(j)
    for k, v in d.items():
        m = {b: st.mean(x["ms_per_call"] for x in v if x["bin"] == b) for b in BINS if any(x["bin"] == b for x in v)}
        rel = "".join(f' {b}/base {m[b] / m["base"]:.3f}' for b in BINS[1:] if b in m and "base" in m)
        if "t9" in m and "t16" in m: rel += f' t9/t16 {m["t9"] / m["t16"]:.3f}'
        cells = []
        for x in v:
            t = 1e3 * x["ms_per_call"] if unit_us else x["ms_per_call"]
            fr = 100 * (x["bandwidth_fraction"] if unit_us else x["peak_fraction"])
            cells.append(f'{x["bin"]}{x["round"]}:{t:.{1 if unit_us else 3}f}({fr:.0f}%{"" if unit_us else " " + x["isa"]})')
        print(*k, " ".join(cells) + rel)
sh = lambda j: f'{j["rows"]}x{j["cols"]}'
table("t512.jsonl", "ms per call (fraction of the process's int8 VNNI peak), run order; mean ratios", lambda j: (j["format"], sh(j)), False)
print("== t512: Q6_K / Q4_K time in the same process (Q4_K's code is the same in both binaries)")
d = collections.defaultdict(dict)
for j in rows("t512.jsonl"): d[(j["bin"], j["round"], sh(j))][j["format"]] = j
for (b, r, s), f in sorted(d.items(), key=lambda x: (x[0][2], x[0][1], x[0][0])):
    if "q6_K" in f and "q4_K" in f: print(s, f"{b}{r}", f'{f["q6_K"]["ms_per_call"] / f["q4_K"]["ms_per_call"]:.3f}', f'peak {f["q6_K"]["peak_gops"]:.0f} GOP/s')
table("thr.jsonl", "Q6_K ms per call (peak fraction, isa): t9 = AMX from 9, t16 = AVX512 below 16", lambda j: (j["format"], sh(j), f'T{j["tokens"]}'), False)
table("t1.jsonl", "us per call (fraction of the process's DRAM probe), run order; mean ratios", lambda j: (j["format"], sh(j)), True)
print("== one.jsonl: 1 thread, ns per 16x16x256 step")
for j in rows("one.jsonl"):
    steps = (j["rows"] // 16) * (j["cols"] // 256) * (j["tokens"] // 16)
    print(j["bin"], j["round"], j["format"], sh(j), f'{1e6 * j["ms_per_call"] * j["threads"] / steps:.0f} ns ({j["ms_per_call"]:.3f} ms, {100 * j["peak_fraction"]:.0f}% of {j["peak_gops"]:.0f} GOP/s)')
print("== moe.jsonl: ms per call, run order")
for j in rows("moe.jsonl"):
    print(j["bin"], j["round"], j.get("shape"), f'{j["ms_per_call"]:.3f} ms', {k: v for k, v in j.items() if k in ("tokens", "gate", "down", "isa", "tflops", "peak_fraction")})
PY
cat $o/summary.txt
for r in 1 2; do [ -f $o/probe$r.txt ] && { echo "-- probe $r (driver = new's library path; static = base's hand-out)"; grep -E "format|driver|static |static_rf" $o/probe$r.txt; }; done
log done
