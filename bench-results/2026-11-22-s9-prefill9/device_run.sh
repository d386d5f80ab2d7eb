#!/usr/bin/env bash
# prefill9 device call (session 9, issue 4). Carry: .device-carry/prefill9 and .device-carry/s9base.
# new = branch prefill9 (kt-bench --release --features cuda, stripped; COMMIT has the hash), base = s9base
# (main c6bb6aa). 16 threads, --json --cpu-time, --seconds 1:
# 1. V3 q4_k 512 and V2-Lite int4 g128 512, base/new interleaved x2 (order rotating);
# 2. V3 int4 g128 512 and V2-Lite q4_k T=1, new and base once each;
# 3. the branch's test binaries (AMX paths run here).
# Each kt-bench run's wall time (setup included) is logged: the branch builds the layer copies in
# parallel. Every sub-run has a timeout and a time guard; the whole script stays under ~200 s.
# Results: $OUT/prefill9.tgz (summary.txt inside), written incrementally.
set -uo pipefail
t0=$SECONDS
D=.device-carry/prefill9
o=$OUT/prefill9; mkdir -p $o/tests
trap 'cd $OUT && tar czf prefill9.tgz prefill9' EXIT
B=/tmp/prefill9-bin; mkdir -p $B/tests
xz -dc $D/kt-bench.xz > $B/kt-bench-new; chmod +x $B/kt-bench-new
cp .device-carry/s9base/kt-bench $B/kt-bench-base
tar xJf $D/tests.tar.xz -C $B/tests
cp $D/COMMIT $o/ 2>/dev/null
left() { [ $((SECONDS - t0)) -lt $1 ]; }
log() { echo "$* (at $((SECONDS - t0)) s)" | tee -a $o/log.txt; }
nproc >> $o/log.txt; lscpu | grep -E "Model name|MHz|Flags" | grep -oE "Model name.*|MHz.*|amx_int8" | sort -u >> $o/log.txt
m() { # m BIN ROUND TIMEOUT ARGS...: one kt-bench moe run, one JSON line tagged with bin, round, wall s
  local b=$1 r=$2 to=$3; shift 3
  local s0=$(date +%s%N)
  local j; j=$(timeout $to $B/kt-bench-$b moe "$@" --threads 16 --json --cpu-time 2>>$o/err.txt)
  local rc=$? w; w=$(( ($(date +%s%N) - s0) / 1000000 )); w=$((w / 1000)).$(printf %03d $((w % 1000)))
  [ -n "$j" ] && echo "$j" | sed "s/^{/{\"bin\":\"$b\",\"round\":$r,\"process_s\":$w,/" >> $o/moe.jsonl
  log "moe $b r$r $* rc $rc process ${w}s"
}
# Guards: the V3 Q4_K pairs first (the target), then V2-Lite int4, V3 int4, T=1; the tests in order of
# what the branch changed, each in the time left (the whole script ends by ~195 s).
for r in 1 2; do
  order="base new"; [ $r = 2 ] && order="new base"
  for b in $order; do left $((90 + 20 * r)) && m $b $r 45 --shape deepseek-v3 --format q4_k --tokens 512 --seconds 1; done
  for b in $order; do left $((100 + 20 * r)) && m $b $r 40 --shape deepseek-v2-lite --format int4 --group 128 --tokens 512 --seconds 1; done
done
for b in new base; do left 145 && m $b 1 40 --shape deepseek-v3 --format int4 --group 128 --tokens 512 --seconds 1; done
for b in new base; do left 165 && m $b 1 25 --shape deepseek-v2-lite --format q4_k --tokens 1 --seconds 0.5; done
for n in moe_q4k_amx moe_no_alloc moe_api moe_repacked_moe moe_correctness cpu_amx_gemm; do
  rest=$((195 - (SECONDS - t0))); [ $rest -gt 5 ] || { log "test $n skipped"; continue; }
  timeout $((rest < 60 ? rest : 60)) $B/tests/$n --test-threads 16 > $o/tests/$n.txt 2>&1
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
        rows[key].append((j["round"], round(j["ms_per_call"], 3), round(j.get("cpu_ms_per_call") or 0, 1), round(j["process_s"], 1)))
        print("moe", j["bin"], "r%d" % j["round"], j["shape"], j["gate"], "T=%d" % j["tokens"], j["isa"],
              "%.3f ms" % j["ms_per_call"], "cpu %.1f ms" % (j.get("cpu_ms_per_call") or 0),
              "dram %.1f" % j["dram_gbps"], "process %.1f s" % j["process_s"])
except Exception as e:
    print("moe.jsonl error", e)
for k in sorted(rows):
    print("by case (round, ms, cpu ms, process s)", *k, rows[k])
PY
log done
