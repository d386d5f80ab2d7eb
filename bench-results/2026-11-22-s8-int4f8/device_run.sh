#!/usr/bin/env bash
# int4f8 device call (session 8, issue 4: V2-Lite int4 512 <= 8 ms). Carry: .device-carry/int4f8 and
# .device-carry/s8base. new = branch int4f8 (kt-bench --features cuda, stripped; COMMIT has the hash):
# INT4 scales folded into a row scale x integer group multipliers, per-token activations for AMX
# prefill, the AMX INT4 kernel accumulating whole rows in int32. base = s8base (main e0c5c5d).
# 1. V2-Lite int4 g128 512 and V3 int4 g128 512, new/base interleaved x3 (order rotating), 16 threads;
# 2. V2-Lite int4 g128 T=1 and T=8, new/base; 3. the branch's test binaries (AMX paths run here).
# Every sub-run has a timeout and a time guard; the whole script stays under ~235 s.
# Results: $OUT/int4f8.tgz (summary.txt inside), written incrementally.
set -uo pipefail
t0=$SECONDS
D=.device-carry/int4f8
o=$OUT/int4f8; mkdir -p $o/tests
trap 'cd $OUT && tar czf int4f8.tgz int4f8' EXIT
B=/tmp/int4f8-bin; mkdir -p $B/tests
cp $D/kt-bench $B/kt-bench-new; cp .device-carry/s8base/kt-bench $B/kt-bench-base
tar xJf $D/tests.tar.xz -C $B/tests
cp $D/COMMIT $o/ 2>/dev/null
left() { [ $((SECONDS - t0)) -lt $1 ]; }
log() { echo "$* (at $((SECONDS - t0)) s)" | tee -a $o/log.txt; }
nproc >> $o/log.txt; lscpu | grep -E "Model name|MHz|Flags" | grep -oE "Model name.*|MHz.*|amx_int8" | sort -u >> $o/log.txt
m() { # m BIN ROUND TIMEOUT ARGS...: one kt-bench moe run, one JSON line tagged with bin and round
  local b=$1 r=$2 to=$3; shift 3
  timeout $to $B/kt-bench-$b moe "$@" --threads 16 --json --cpu-time 2>>$o/err.txt \
    | sed "s/^{/{\"bin\":\"$b\",\"round\":$r,/" >> $o/moe.jsonl
  log "moe $b r$r $* rc ${PIPESTATUS[0]}"
}
# About 30 s per V2-Lite run on the device (layer copies and the DRAM probe), ~15-20 s per V3 run:
# two rounds of V2-Lite, V3 as time allows, then T=1/T=8; ~35 s kept for the tests.
for r in 1 2 3; do
  order="base new"; [ $r = 2 ] && order="new base"
  for b in $order; do left 165 && m $b $r 40 --shape deepseek-v2-lite --format int4 --group 128 --tokens 512 --seconds 1; done
  for b in $order; do left 150 && m $b $r 45 --shape deepseek-v3 --format int4 --group 128 --tokens 512 --seconds 1; done
done
for t in 1 8; do for b in new base; do
  left 175 && m $b 1 25 --shape deepseek-v2-lite --format int4 --group 128 --tokens $t --seconds 0.5
done; done
for n in moe_repacked_fold moe_repacked_kernels moe_repacked_moe moe_repacked_no_alloc; do
  rest=$((232 - (SECONDS - t0))); [ $rest -gt 5 ] || { log "test $n skipped"; continue; }
  timeout $((rest < 60 ? rest : 60)) $B/tests/$n --test-threads 8 > $o/tests/$n.txt 2>&1
  log "test $n rc $? $(grep -E '^test result' $o/tests/$n.txt | tail -1)"
done
python3 - "$o" <<'PY' | tee $o/summary.txt
import json, sys, collections
o = sys.argv[1]
rows = collections.defaultdict(list)
try:
    for l in open(f"{o}/moe.jsonl"):
        j = json.loads(l)
        key = (j["shape"], j["gate"], j["tokens"], j["bin"])
        rows[key].append((j["round"], round(j["ms_per_call"], 3), round(j.get("cpu_ms_per_call") or 0, 1)))
        print("moe", j["bin"], "r%d" % j["round"], j["shape"], j["gate"], "T=%d" % j["tokens"], j["isa"],
              "%.3f ms" % j["ms_per_call"], "cpu %.1f ms" % (j.get("cpu_ms_per_call") or 0), "dram %.1f" % j["dram_gbps"])
except Exception as e:
    print("moe.jsonl error", e)
for k in sorted(rows):
    print("by case", *k, rows[k])
PY
log done
