#!/usr/bin/env bash
# gemm12 device script (session 12, issue 2). new = branch gemm12 (COMMIT): (a) Q6_K AMX step with sc*q split
# into its low byte (tdpbusd) and high byte (tdpbssd): 8 tile products, 12 tile loads, 2 C stores a step
# (was 12 / 16 / 3, the three-digit split); (b) GEMV of one item a thread with f32 activations: job posted
# first, item 0 (caller) quantizes and raises a flag, the others prefetch their first rows and wait
# (gemm11's static_rf probe variant as library code). lo = new with Q6_K's AMX threshold at 16 tokens (64).
# split = new + the GEMV's activations quantized in parts (part i by item i, every item waits for all parts;
# commit b4ebcab, an experiment). c4 = split + the Q6_K step with four C tiles (even / odd K chunks: four
# accumulation chains of two products instead of two of four, in case tdpb* latency, not throughput, bounds a
# thread; two more C stores a step; c4.diff, an experiment).
# base = s12base (main 54a8a0b, --features cuda; the CPU code paths are the same). 16 threads, one process
# per binary, interleaved.
#  1. GEMM at 512 tokens, q6_k,q4_k, 4 shapes: base new c4 | c4 new base | base new c4
#  2. tests (new): kt_kernels lib cpu:: (pool, driver, q6_k stages), cpu_amx_gemm, matmul_backends,
#     matmul_no_alloc, cpu_avx512_kernels (KT_TEST_FIXTURES=kt-kernels/tests/fixtures)
#  3. GEMV at 1 token, q4_k,q6_k,q2_k, 1408x2048, 2048x1408 (one item a thread: the changed path):
#     base new split | split new base | base new split; between the rounds gemv-probe of each binary (new
#     split | split new): `driver` (the binary's library path) against `static` (the caller
#     quantizes, then the job: base's hand-out) and `static_rf` (the probe's copy of new's path), call by
#     call in one process
#  4. Q6_K AMX threshold: tokens 16,32,48,64 on 7168x2048, 2048x7168, 1408x2048: new (AVX512 below 64),
#     lo (AMX from 16), base (old AMX at 64): new lo base | lo new
#  5. thread scaling of the Q6_K/Q4_K GEMM at 512 (1 and 8 threads): new base c4
# Reads only .device-carry/gemm12/ (+ ../s12base/kt-bench.xz); writes $OUT/gemm12/ (summary.txt first).
# Whole script < 200 s wall (a guard per step, a timeout per process).
set -uo pipefail
TH=${GEMM12_THREADS:-16}   # 16 on the device; fewer only to try the script on the dev VM
D=$(cd "$(dirname "$0")" && pwd)
t0=$SECONDS
o=$OUT/gemm12; mkdir -p $o
B=/tmp/gemm12-bin; mkdir -p $B
tar xJf $D/bin.tar.xz -C $B
if [ -f $D/../s12base/kt-bench.xz ]; then xz -dc $D/../s12base/kt-bench.xz > $B/kt-bench-base && chmod +x $B/kt-bench-base; fi
left() { [ $((SECONDS - t0)) -lt $1 ]; }
log() { echo "$* (at $((SECONDS - t0)) s)" | tee -a $o/log.txt; }
{ nproc; lscpu | grep -E "Model name|Thread|Core|Socket|MHz|L2|L3|NUMA"; grep -o 'amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' '; echo; cat $D/COMMIT; } >> $o/log.txt 2>&1
exe() { case $1 in base) echo $B/kt-bench-base;; lo|split|c4) echo $B/kt-bench-$1;; *) echo $B/kt-bench;; esac; }
have() { [ -x "$(exe $1)" ] || { log "no binary for $1"; return 1; }; }
tagjson() { sed "s/^{/{\"bin\":\"$1\",\"round\":$2,/"; }
mm() { local v=$1 r=$2 tag=$3 lim=$4; shift 4; have $v || return
  timeout $lim $(exe $v) matmul "$@" --json 2>>$o/err.txt | tagjson $v $r >> $o/$tag.jsonl
  log "$tag $v round $r rc ${PIPESTATUS[0]}"; }
# GEMM12_SH / _SH1 / _SHT / _SHP: smaller shapes, only to try the script on the dev VM.
SH=${GEMM12_SH:-7168x2048,2048x7168,1408x2048,18432x7168}
SH1=${GEMM12_SH1:-1408x2048,2048x1408}
SHT=${GEMM12_SHT:-7168x2048,2048x7168,1408x2048}
SHS=${GEMM12_SHS:-2048x7168,1408x2048}
SHP=${GEMM12_SHP:-1408x2048,2048x1408}
gemm() { mm $1 $2 t512 25 --tokens 512 --formats q6_k,q4_k --shapes $SH --threads $TH --seconds 0.2; }
gemv() { mm $1 $2 t1 25 --tokens 1 --formats q4_k,q6_k,q2_k --shapes $SH1 --threads $TH --seconds 0.2; }
thr() { mm $1 $2 thr 20 --tokens 16,32,48,64 --formats q6_k --shapes $SHT --threads $TH --seconds 0.1; }
scale() { for th in 1 8; do mm $1 $2 scale 20 --tokens 512 --formats q6_k,q4_k --shapes $SHS --threads $th --seconds 0.1; done; }
probe() { local v=$1 r=$2; have $v || return
  timeout 20 $(exe $v) gemv-probe --threads $TH --formats q4_k,q6_k,q2_k --shapes $SHP --calls ${GEMM12_CALLS:-800} \
    > $o/probe_$v$r.txt 2>>$o/err.txt; log "probe $v $r rc $?"; }
# 1. GEMM at 512, interleaved x3
for p in "base 1" "new 1" "c4 1" "c4 2" "new 2" "base 2" "base 3" "new 3" "c4 3"; do left 70 && gemm $p; done
# 2. tests (new binaries)
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for t in kt_kernels cpu_amx_gemm matmul_backends matmul_no_alloc cpu_avx512_kernels; do
  [ -x $B/$t ] || continue; left 105 || { log "test $t skipped"; continue; }
  f=""; [ $t = kt_kernels ] && f="cpu::"
  timeout 20 $B/$t $f --test-threads 16 > $o/test_$t.txt 2>&1
  log "test $t rc $? $(grep -E '^test result' $o/test_$t.txt | tail -1)"; done
# 3. GEMV at 1, interleaved x3, with the probe of each binary between the rounds
for p in "base 1" "new 1" "split 1"; do left 125 && gemv $p; done
for p in "new 1" "split 1"; do left 125 && probe $p; done
for p in "split 2" "new 2" "base 2"; do left 135 && gemv $p; done
for p in "split 2" "new 2"; do left 135 && probe $p; done
for p in "base 3" "new 3" "split 3"; do left 150 && gemv $p; done
# 4. threshold, then scaling
for p in "new 1" "lo 1" "base 1"; do left 165 && thr $p; done
for p in "new 1" "base 1" "c4 1"; do left 174 && scale $p; done
python3 - "$o" <<'PY' > $o/summary.txt 2>&1
import json, sys, collections, statistics as st
o = sys.argv[1]
def rows(f):
    try: return [json.loads(l) for l in open(f"{o}/{f}") if l.startswith("{") and "ms_per_call" in l]
    except FileNotFoundError: return []
def table(f, title, key, unit_us):
    print(f"== {f}: {title}")
    d = collections.defaultdict(list)
    for j in rows(f): d[key(j)].append(j)
    for k, v in d.items():
        m = {b: st.mean(x["ms_per_call"] for x in v if x["bin"] == b) for b in ("base", "new", "lo", "split", "c4") if any(x["bin"] == b for x in v)}
        rel = "".join(f' {b}/base {m[b] / m["base"]:.3f}' for b in ("new", "lo", "split", "c4") if b in m and "base" in m)
        if "c4" in m and "new" in m: rel += f' c4/new {m["c4"] / m["new"]:.3f}'
        if "split" in m and "new" in m: rel += f' split/new {m["split"] / m["new"]:.3f}'
        if "lo" in m and "new" in m: rel += f' lo/new {m["lo"] / m["new"]:.3f}'
        cells = []
        for x in v:
            t = 1e3 * x["ms_per_call"] if unit_us else x["ms_per_call"]
            fr = 100 * (x["bandwidth_fraction"] if unit_us else x["peak_fraction"])
            cells.append(f'{x["bin"]}{x["round"]}:{t:.{1 if unit_us else 3}f}({fr:.0f}%{"" if unit_us else " " + x["isa"]})')
        print(*k, " ".join(cells) + rel)
sh = lambda j: f'{j["rows"]}x{j["cols"]}'
table("t512.jsonl", "ms per call (fraction of the process's int8 VNNI peak), run order; mean ratios", lambda j: (j["format"], sh(j)), False)
table("t1.jsonl", "us per call (fraction of the process's DRAM probe), run order; mean ratios", lambda j: (j["format"], sh(j)), True)
table("thr.jsonl", "Q6_K ms per call (peak fraction, isa): new = AVX512 below 64, lo = AMX from 16", lambda j: (j["format"], sh(j), f'T{j["tokens"]}'), False)
print("== scale.jsonl: ns per 16x16x256 step per thread (ms per call), by threads")
for j in rows("scale.jsonl"):
    steps = (j["rows"] // 16) * (j["cols"] // 256) * (j["tokens"] // 16)
    print(j["bin"], j["round"], j["format"], sh(j), "threads", j["threads"], f'{1e6 * j["ms_per_call"] * j["threads"] / steps:.0f} ns ({j["ms_per_call"]:.3f} ms, {100 * j["peak_fraction"]:.0f}% of {j["peak_gops"]:.0f} GOP/s)')
PY
cat $o/summary.txt
echo "== probes: driver = the binary's library path (new: item 0 quantizes in the job; split: in parts), static = the caller quantizes, then the job (base's hand-out), static_rf = the probe's copy of new's; compare driver - static between binaries"
for f in $o/probe_*.txt; do [ -f $f ] && { echo "-- $(basename $f .txt)"; grep -E "format|driver|static |static_rf" $f; }; done
log done
