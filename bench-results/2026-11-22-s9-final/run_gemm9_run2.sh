#!/usr/bin/env bash
# gemm9 optional second call: is the 512-token GEMM's +10% of the first call (new vs base) the records pass's
# super-block runs or the instance? new = gemm9 (c1edf24, bin.tar.xz), rec1 = the same with whole-group
# records items whenever there are at least as many groups as threads (base's items at 512 tokens, the
# runs only at 16 tokens; bin2.tar.xz), base = s9base. 16 threads, interleaved x2 in rotating order.
# Carry .device-carry/gemm9 and .device-carry/s9base. <= 120 s; results in $OUT/gemm9b.tgz (at EXIT).
set -uo pipefail
t0=$SECONDS
B=/tmp/gemm9-bin; mkdir -p $B && tar xJf .device-carry/gemm9/bin.tar.xz -C $B && tar xJf .device-carry/gemm9/bin2.tar.xz -C $B
cp .device-carry/s9base/kt-bench $B/kt-bench-base
o=$OUT/gemm9b; mkdir -p $o
trap 'cd $OUT && tar czf gemm9b.tgz gemm9b' EXIT
left() { [ $((SECONDS - t0)) -lt $1 ]; }
log() { echo "$* (at $((SECONDS - t0)) s)" | tee -a $o/log.txt; }
exe() { case $1 in base) echo $B/kt-bench-base;; rec1) echo $B/kt-bench-rec1;; *) echo $B/kt-bench;; esac; }
mm() { local v=$1 tag=$2 lim=$3; shift 3
  timeout $lim $(exe $v) matmul "$@" --threads 16 --json 2>>$o/err.txt \
    | sed "s/^{/{\"bin\":\"$v\",\"tag\":\"$tag\",/" >> $o/$tag.jsonl
  log "$tag $v rc ${PIPESTATUS[0]}"; }
SH=7168x2048,2048x7168,1408x2048,18432x7168
for order in "base new rec1" "new rec1 base" "rec1 base new"; do for v in $order; do left 105 || continue
  mm $v t512 14 --tokens 512 --formats q4_k,q6_k --shapes $SH --seconds 0.2; done; done
python3 - "$o" <<'PY' > $o/summary.txt 2>&1
import json, sys, collections
rows = collections.defaultdict(list)
for l in open(f"{sys.argv[1]}/t512.jsonl"):
    j = json.loads(l)
    if "ms_per_call" in j: rows[(j["format"], f'{j["rows"]}x{j["cols"]}')].append((j["bin"], round(j["ms_per_call"], 3)))
print("== t512 ms_per_call in run order")
for k, v in rows.items(): print(*k, " ".join(f"{b}:{ms}" for b, ms in v))
PY
cat $o/summary.txt; log done
