#!/usr/bin/env bash
# prefill10 device call (session 10, issue 4). Carry: .device-carry/prefill10 and .device-carry/s10base.
# new = branch prefill10 (kt-bench --release --features cuda, stripped; COMMIT has the hash), base = s10base
# (main 7d522c4). x = new + throwaway env knobs (knobs.patch; no cuda feature; defaults = new):
#   KT_X_IL=0 the weight prefetch as one burst per step (base's way), 1 interleaved row by row (new);
#   KT_X_PF=N prefetch distance in super-blocks (2); KT_X_FOLD=N folded Q4_K kernel above N tokens (64);
#   KT_X_AMXMIN=N Q4_K on AMX from N tokens (12); KT_X_TAIL=N tails split off to AVX512 (4; 0 = none);
#   KT_X_FUSED=1 prefill through the decode's one-job path (gate+up, per-expert quantize, down; 0 = phases).
# 16 threads, --json --cpu-time --seconds 1. Order (time guards drop the later ones):
# 1. V3 q4_k 512 and V2-Lite int4 g128 512, base/new interleaved x2 (order rotating);
# 2. V3 int4 g128 512 and V2-Lite q4_k T=1, new and base once each;
# 3. the test binaries except moe_correctness (AMX paths run here);
# 4. x variants: V2-Lite int4 512 FUSED 0/1, V3 q4_k 512 (env knobs); V2-Lite int4 512 --prefetch variants (new);
# 5. moe_correctness in what is left.
# Results: $OUT/prefill10.tgz (summary.txt inside), written incrementally. Whole script <= ~168 s.
set -uo pipefail
t0=$SECONDS
D=.device-carry/prefill10
o=$OUT/prefill10; mkdir -p $o/tests
trap 'cd $OUT && tar czf prefill10.tgz prefill10' EXIT
B=/tmp/prefill10-bin; mkdir -p $B/tests
xz -dc $D/kt-bench.xz > $B/kt-bench-new; chmod +x $B/kt-bench-new
xz -dc $D/kt-bench-x.xz > $B/kt-bench-x; chmod +x $B/kt-bench-x
cp .device-carry/s10base/kt-bench $B/kt-bench-base
tar xJf $D/tests.tar.xz -C $B/tests
cp $D/COMMIT $o/ 2>/dev/null
left() { [ $((SECONDS - t0)) -lt $1 ]; }
log() { echo "$* (at $((SECONDS - t0)) s)" | tee -a $o/log.txt; }
nproc >> $o/log.txt; lscpu | grep -E "Model name|MHz|Flags" | grep -oE "Model name.*|MHz.*|amx_int8" | sort -u >> $o/log.txt
m() { # m BIN TAG TIMEOUT ARGS...: one kt-bench moe run (env from XENV), one JSON line tagged with bin, tag, wall s
  local b=$1 r=$2 to=$3; shift 3
  local s0=$(date +%s%N)
  local j; j=$(env ${XENV:-} timeout $to $B/kt-bench-$b moe "$@" --threads 16 --json --cpu-time 2>>$o/err.txt)
  local rc=$? w; w=$(( ($(date +%s%N) - s0) / 1000000 )); w=$((w / 1000)).$(printf %03d $((w % 1000)))
  [ -n "$j" ] && echo "$j" | sed "s/^{/{\"bin\":\"$b\",\"tag\":\"$r\",\"env\":\"${XENV:-}\",\"process_s\":$w,/" >> $o/moe.jsonl
  log "moe $b $r ${XENV:-} $* rc $rc process ${w}s"
}
V3="--shape deepseek-v3 --format q4_k --tokens 512 --seconds 1"
V2I="--shape deepseek-v2-lite --format int4 --group 128 --tokens 512 --seconds 1"
for r in 1 2; do
  order="base new"; [ $r = 2 ] && order="new base"
  for b in $order; do left $((30 + 14 * r)) && m $b r$r 25 $V3; done
  for b in $order; do left $((40 + 14 * r)) && m $b r$r 25 $V2I; done
done
for b in new base; do left 80 && m $b r1 25 --shape deepseek-v3 --format int4 --group 128 --tokens 512 --seconds 1; done
for b in new base; do left 90 && m $b r1 15 --shape deepseek-v2-lite --format q4_k --tokens 1 --seconds 0.5; done
t() { # t NAME CAP: one test binary, at most CAP s and what is left before 166 s
  local rest=$((166 - (SECONDS - t0))); [ $rest -gt 5 ] || { log "test $1 skipped"; return; }
  timeout $((rest < $2 ? rest : $2)) $B/tests/$1 --test-threads 16 > $o/tests/$1.txt 2>&1
  log "test $1 rc $? $(grep -E '^test result' $o/tests/$1.txt | tail -1)"
}
for n in moe_q4k_amx cpu_amx_gemm moe_repacked_moe moe_api moe_no_alloc; do left 125 && t $n 25; done
for v in "KT_X_FUSED=0" "KT_X_FUSED=1"; do left 132 && XENV="$v" m x x 15 $V2I; done
for v in "KT_X_IL=0" "KT_X_IL=1" "KT_X_PF=4" "KT_X_FUSED=1" "KT_X_FOLD=0" "KT_X_TAIL=0" "KT_X_AMXMIN=10" "KT_X_PF=8"; do
  left 140 && XENV="$v" m x x 20 $V3
done
for p in 4:l1 2:l2; do left 148 && m new "pf$p" 15 $V2I --prefetch $p; done
t moe_correctness 60
python3 - "$o" <<'PY' | tee $o/summary.txt
import json, sys, collections
o = sys.argv[1]
rows = collections.defaultdict(list)
try:
    for l in open(f"{o}/moe.jsonl"):
        j = json.loads(l)
        key = (j["shape"], j["gate"], j["tokens"], j["bin"], j["env"])
        rows[key].append((j["tag"], round(j["ms_per_call"], 3), round(j.get("cpu_ms_per_call") or 0, 1), round(j["process_s"], 1)))
        print("moe", j["bin"], j["tag"], j["env"] or "-", j["shape"], j["gate"], "T=%d" % j["tokens"], j["isa"],
              "%.3f ms" % j["ms_per_call"], "cpu %.1f ms" % (j.get("cpu_ms_per_call") or 0),
              "dram %.1f" % j["dram_gbps"], "process %.1f s" % j["process_s"])
except Exception as e:
    print("moe.jsonl error", e)
for k in sorted(rows):
    print("by case (tag, ms, cpu ms, process s)", *k, rows[k])
PY
log done
