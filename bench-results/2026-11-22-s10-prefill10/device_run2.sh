#!/usr/bin/env bash
# prefill10 OPTIONAL second device call (session 10): firms up call 1 (RESULTS/), where the non-cuda knob binary
# (x) read 15-25% faster than the cuda-featured new binary on both V3 Q4_K 512 and V2-Lite int4 512, later in
# the call. Same code, two builds: new = branch prefill10 at COMMIT with --features cuda (call 1's binary),
# newnc = the same commit without the cuda feature; base = s10base (cuda). x = newnc + knobs (KT_X_IL=0: the
# prefetch burst of base, the one change of the branch). Carry: .device-carry/prefill10 and .device-carry/s10base.
# Rotating order x3: V3 q4_k 512 {base, new, newnc, x IL=0}, V2-Lite int4 g128 512 {base, new, newnc}.
# 16 threads, --json --cpu-time --seconds 1. Results: $OUT/prefill10b.tgz (summary.txt inside). <= ~165 s.
set -uo pipefail
t0=$SECONDS
D=.device-carry/prefill10
o=$OUT/prefill10b; mkdir -p $o
trap 'cd $OUT && tar czf prefill10b.tgz prefill10b' EXIT
B=/tmp/prefill10-bin; mkdir -p $B
xz -dc $D/kt-bench.xz > $B/kt-bench-new; xz -dc $D/kt-bench-newnc.xz > $B/kt-bench-newnc
xz -dc $D/kt-bench-x.xz > $B/kt-bench-x; chmod +x $B/kt-bench-*
cp .device-carry/s10base/kt-bench $B/kt-bench-base
cp $D/COMMIT $o/ 2>/dev/null
left() { [ $((SECONDS - t0)) -lt $1 ]; }
log() { echo "$* (at $((SECONDS - t0)) s)" | tee -a $o/log.txt; }
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
for r in 1 2 3; do
  case $r in 1) o3="base new newnc xb";; 2) o3="newnc xb base new";; 3) o3="new base xb newnc";; esac
  for b in $o3; do
    if [ $b = xb ]; then left $((45 * r + 15)) && XENV="KT_X_IL=0" m x r$r 20 $V3
    else left $((45 * r + 15)) && m $b r$r 20 $V3; fi
  done
  for b in $o3; do [ $b = xb ] && continue; left $((45 * r + 25)) && m $b r$r 15 $V2I; done
done
python3 - "$o" <<'PY' | tee $o/summary.txt
import json, sys, collections
o = sys.argv[1]
rows = collections.defaultdict(list)
try:
    for l in open(f"{o}/moe.jsonl"):
        j = json.loads(l)
        key = (j["shape"], j["gate"], j["tokens"], j["bin"], j["env"])
        rows[key].append((j["tag"], round(j["ms_per_call"], 3), round(j.get("cpu_ms_per_call") or 0, 1)))
        print("moe", j["bin"], j["tag"], j["env"] or "-", j["shape"], j["gate"], "T=%d" % j["tokens"],
              "%.3f ms" % j["ms_per_call"], "cpu %.1f ms" % (j.get("cpu_ms_per_call") or 0), "dram %.1f" % j["dram_gbps"])
except Exception as e:
    print("moe.jsonl error", e)
for k in sorted(rows):
    print("by case (tag, ms, cpu ms)", *k, rows[k])
PY
log done
