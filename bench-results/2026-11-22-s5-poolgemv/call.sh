#!/usr/bin/env bash
# poolgemv device call: new (branch poolgemv) vs base (s5base, main at db43f03) interleaved, 16 threads:
# pool round trip, GEMV 1 token (K-quants on the issue-2 shapes), MoE T=1 (V2-Lite, V3, Q4_K);
# then (new only) cache-resident GEMV per core for the Q2_K diagnosis, and the CPU test binaries.
set -uo pipefail
C=.device-carry/poolgemv; B=/tmp/pg; mkdir -p $B/tests
tar xJf $C/bin.tar.xz -C $B && cp .device-carry/s5base/kt-bench $B/kt-bench-base
t0=$SECONDS; R=$OUT/r; mkdir -p $R/tests
lscpu > $R/lscpu.txt 2>&1; uptime > $R/uptime.txt
lab() { sed "s/^{/{\"bin\":\"$1\",\"rep\":$2,/"; }
for rep in 1 2; do
  for b in new base; do exe=$B/kt-bench; [ $b = base ] && exe=$B/kt-bench-base
    { timeout 40 $exe pool --threads 16 --json --jobs 20000 --item-floats 0,2048
      timeout 20 $exe pool --threads 16 --json --jobs 20000 --item-floats 0 --items-per-thread 1
      timeout 20 $exe pool --threads 16 --json --jobs 20000 --item-floats 0 --items-per-thread 2; } 2>>$R/err.txt | lab $b $rep >> $R/pool.jsonl
    timeout 90 $exe matmul --threads 16 --tokens 1 --formats q4_k,q5_k,q2_k,q6_k \
      --shapes 2048x7168,7168x2048,1408x2048,18432x7168 --seconds 0.25 --json 2>>$R/err.txt | lab $b $rep >> $R/gemv.jsonl
    for sh in deepseek-v2-lite deepseek-v3; do
      timeout 60 $exe moe --shape $sh --format q4_k --tokens 1 --threads 16 --seconds 0.5 --json 2>>$R/err.txt | lab $b $rep >> $R/moe.jsonl
    done
    echo "rep $rep $b done $((SECONDS-t0))s"
  done
done
timeout 40 $B/kt-bench matmul --threads 1 --tokens 1 --resident --formats q2_k,q4_k,q6_k --shapes 2048x7168 --seconds 0.2 --json 2>>$R/err.txt | lab new-res1 0 >> $R/resident.jsonl
timeout 40 $B/kt-bench matmul --threads 16 --tokens 1 --resident --formats q2_k,q4_k,q6_k --shapes 2048x7168 --seconds 0.2 --json 2>>$R/err.txt | lab new-res16 0 >> $R/resident.jsonl
echo "resident done $((SECONDS-t0))s"
# test binaries look for fixtures under the manifest dir they were built in
mkdir -p /work/wt/poolgemv 2>/dev/null && [ -e /work/wt/poolgemv/kt-kernels ] || ln -s $PWD/kt-kernels /work/wt/poolgemv/kt-kernels
for t in $B/tests/*; do n=$(basename $t); [ $((SECONDS-t0)) -gt 300 ] && { echo "test $n skipped"; continue; }
  f=""; [ $n = kt_kernels_lib ] && f="cpu::"
  timeout 60 $t $f --test-threads 8 > $R/tests/$n.txt 2>&1; echo "test $n rc $? $(grep -E '^test result' $R/tests/$n.txt | tail -1)"; done
cd $OUT && tar czf poolgemv.tgz r
python3 - $R <<'PY'
import json, sys, collections
R = sys.argv[1]
def rows(n):
    out = []
    try:
        for l in open(f"{R}/{n}"):
            if l.startswith("{"): out.append(json.loads(l))
    except FileNotFoundError: pass
    return out
for r in rows("pool.jsonl"):
    print("pool", r["bin"], r["rep"], "items", r["items"], "floats", r["item_floats"], "kt %.2f" % r["kt_pool_us"], "in_order %s" % r.get("kt_in_order_us"), "rayon %.2f" % r["rayon_us"])
g = collections.defaultdict(list)
for r in rows("gemv.jsonl"):
    g[(r["format"], "%dx%d" % (r["rows"], r["cols"]))].append("%s%d %.0f%% %.1fus" % (r["bin"], r["rep"], 100 * r["bandwidth_fraction"], 1000 * r["ms_per_call"]))
for k, v in g.items(): print("gemv", k, " | ".join(v))
for r in rows("moe.jsonl"):
    print("moe", r["bin"], r["rep"], r.get("shape"), "%.3f ms" % r["ms_per_call"], "%.0f%% of bw %.1f" % (100 * r.get("bandwidth_fraction", 0), r.get("dram_gbps", 0)))
for r in rows("resident.jsonl"):
    print("resident", r["bin"], r["format"], "%.1f GB/s" % r["weight_gbps"])
PY
