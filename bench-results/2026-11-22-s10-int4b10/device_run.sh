#!/usr/bin/env bash
# int4b10 device call (session 10, issue 4: V2-Lite int4 g128 512 <= 8 ms robustly). Carry: .device-carry/int4b10
# and .device-carry/s10base. new = branch int4b10 (COMMIT), kt-bench --features cuda, stripped: the folded INT4
# AMX kernel spreads a super-block's tokens evenly over its 16-row blocks (e.g. 50 tokens: 4 blocks of 13 rows,
# not 16+16+16+2). It also has a TEMPORARY knob KT_INT4B10 (removed after this call), each with the even rows:
# 1n = chunk order as base (default), 1i = next chunk unpacked in panel slices between the row blocks, 2i = C
# round trip per 256 of K, interleaved unpack (2n: not interleaved).
# 1. V2-Lite int4 g128 512 (16 threads, --cpu-time, --seconds 0.5): base, new, new:1i,
# new:2i rotating x3; 2. new with --prefetch 4:l1 and 2:l2; 3. V3 int4 g128 512 base/new once; 4. the tests.
# Every sub-run has a timeout and a time guard; whole script <= ~145 s. Results: $OUT/int4b10.tgz (summary.txt).
set -uo pipefail
t0=$SECONDS
D=.device-carry/int4b10
o=$OUT/int4b10; mkdir -p $o/tests
trap 'cd $OUT && tar czf int4b10.tgz int4b10' EXIT
B=/tmp/int4b10-bin; mkdir -p $B/tests
tar xJf $D/kt-bench.tar.xz -C $B && mv $B/kt-bench $B/kt-bench-new
cp .device-carry/s10base/kt-bench $B/kt-bench-base
tar xJf $D/tests.tar.xz -C $B/tests
cp $D/COMMIT $o/ 2>/dev/null
left() { [ $((SECONDS - t0)) -lt $1 ]; }
log() { echo "$* (at $((SECONDS - t0)) s)" | tee -a $o/log.txt; }
nproc >> $o/log.txt; lscpu | grep -E "Model name" >> $o/log.txt
m() { # m TAG ROUND TIMEOUT ARGS...: one kt-bench moe run; TAG base, new, new:VARIANT or pf:PREFETCH
  local tag=$1 r=$2 to=$3; shift 3
  local bin=new var=1n extra=""
  case $tag in base) bin=base;; new:*) var=${tag#new:};; pf:*) extra="--prefetch ${tag#pf:}";; esac
  KT_INT4B10=$var timeout $to $B/kt-bench-$bin moe "$@" $extra --threads 16 --json --cpu-time 2>>$o/err.txt \
    | sed "s/^{/{\"bin\":\"$tag\",\"round\":$r,/" >> $o/moe.jsonl
  log "moe $tag r$r $* rc ${PIPESTATUS[0]}"
}
V2="--shape deepseek-v2-lite --format int4 --group 128 --tokens 512 --seconds 0.5"
for r in 1 2 3; do
  case $r in 1) order="base new new:1i new:2i";; 2) order="new:2i new:1i new base";; 3) order="new base new:1i new:2i";; esac
  for b in $order; do left 80 && m $b $r 20 $V2; done
done
for p in 4:l1 2:l2; do left 85 && m pf:$p 1 20 $V2; done
for b in new base; do left 100 && m $b 1 25 --shape deepseek-v3 --format int4 --group 128 --tokens 512 --seconds 0.5; done
for n in moe_repacked_fold moe_repacked_kernels moe_repacked_moe moe_repacked_no_alloc moe_repacked_layouts; do
  rest=$((142 - (SECONDS - t0))); [ $rest -gt 5 ] || { log "test $n skipped"; continue; }
  timeout $((rest < 40 ? rest : 40)) $B/tests/$n --test-threads 8 > $o/tests/$n.txt 2>&1
  log "test $n rc $? $(grep -E '^test result' $o/tests/$n.txt | tail -1)"
done
python3 - "$o" <<'PY' | tee $o/summary.txt
import json, sys, collections
o = sys.argv[1]
rows = collections.defaultdict(list)
try:
    for l in open(f"{o}/moe.jsonl"):
        j = json.loads(l)
        key = (j["shape"], j["tokens"], j["bin"])
        rows[key].append((j["round"], round(j["ms_per_call"], 3), round(j.get("cpu_ms_per_call") or 0, 1)))
        print("moe", j["bin"], "r%d" % j["round"], j["shape"], "T=%d" % j["tokens"], j["isa"],
              "%.3f ms" % j["ms_per_call"], "cpu %.1f ms" % (j.get("cpu_ms_per_call") or 0), "dram %.1f" % j["dram_gbps"])
except Exception as e:
    print("moe.jsonl error", e)
for k in sorted(rows):
    print("by case", *k, rows[k])
PY
log done
