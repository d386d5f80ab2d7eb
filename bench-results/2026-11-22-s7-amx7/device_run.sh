#!/usr/bin/env bash
# amx7 device call (session 7, issue 4: MoE prefill on AMX). Carry: .device-carry/amx7 and
# .device-carry/s7base. new = branch amx7 (kt-bench --features cuda, stripped) vs base =
# s7base (main 4e33a0b), interleaved x3 at 16 threads on V3 Q4_K as stored (512 tokens); on
# V2-Lite int4 g128 (512) base / new / noB x2, noB = new without the repacked down+combine
# fusion (CPU-only build: the one change whose sign the dev VM could not show); then T=1 on
# both shapes (V2-Lite in the Q4_K_M mix); then the branch's test binaries moe_q4k_amx,
# moe_repacked_moe, moe_correctness. Every sub-run has a timeout and a time guard; the whole
# script stays under ~290 s. Results: $OUT/amx7.tgz (summary.txt inside).
set -uo pipefail
t0=$SECONDS
D=.device-carry/amx7
o=$OUT/amx7; mkdir -p $o/tests
trap 'cd $OUT && tar czf amx7.tgz amx7' EXIT
B=/tmp/amx7-bin; mkdir -p $B/tests
cp $D/kt-bench $B/kt-bench-new; cp $D/kt-bench-noB $B/kt-bench-noB; cp .device-carry/s7base/kt-bench $B/kt-bench-base
tar xJf $D/tests.tar.xz -C $B/tests
left() { [ $((SECONDS - t0)) -lt $1 ]; }
log() { echo "$* (at $((SECONDS - t0)) s)" | tee -a $o/log.txt; }
nproc >> $o/log.txt; lscpu | grep -E "Model name|MHz" >> $o/log.txt
m() { # m BIN ROUND TIMEOUT ARGS...: one kt-bench moe run, one JSON line tagged with bin and round
  local b=$1 r=$2 to=$3; shift 3
  timeout $to $B/kt-bench-$b moe "$@" --threads 16 --json --cpu-time 2>>$o/err.txt \
    | sed "s/^{/{\"bin\":\"$b\",\"round\":$r,/" >> $o/moe.jsonl
  log "moe $b r$r $* rc ${PIPESTATUS[0]}"
}
# 1. The two 512-token targets, the order of the binaries rotating per round (V3 Q4_K: noB
#    runs the same code as new, so base/new only; V2-Lite int4: three binaries, two rounds).
for r in 1 2 3; do
  order="base new"; [ $r = 2 ] && order="new base"
  for b in $order; do left 215 && m $b $r 40 --shape deepseek-v3 --format q4_k --tokens 512 --seconds 1; done
  [ $r = 3 ] && continue
  order="base new noB"; [ $r = 2 ] && order="noB new base"
  for b in $order; do left 200 && m $b $r 50 --shape deepseek-v2-lite --format int4 --group 128 --tokens 512 --seconds 1; done
done
# 2. Decode (T=1) on both shapes: the path the prefill changes must leave as fast.
for b in new base; do
  left 240 && m $b 1 20 --shape deepseek-v3 --format q4_k --tokens 1 --seconds 0.5
  left 240 && m $b 1 20 --shape deepseek-v2-lite --format q4_k --tokens 1 --seconds 0.5
done
# 3. The branch's MoE test binaries (AMX paths run here), each bounded by what is left of 285 s.
for n in moe_q4k_amx moe_repacked_moe moe_correctness; do
  rest=$((285 - (SECONDS - t0))); [ $rest -gt 5 ] || { log "test $n skipped"; continue; }
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
