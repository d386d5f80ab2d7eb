#!/usr/bin/env bash
# prefill11 second device script (session 11, issue 4). Reads .device-carry/prefill11 and .device-carry/s11base;
# writes $OUT/prefill11b/ (summary.txt last). <= ~185 s wall (time guards).
# Call 1 found: the AMX tile peak per thread halves from 8 to 16 threads (5.1 -> 2.9 TOP/s a thread) while the VNNI
# peak holds (0.53 -> 0.50), and V3 Q4_K 512 forced to AVX512 ran 154 ms against AMX's 169 at 16 threads. So here:
# the AMX threshold of the Q4_K GEMM (AMX from 12 tokens today) in one process, variants taking turns per call:
# x2 = new + the knobs of x plus a=N (gate/up tiles, K >= 4096: AMX from N tokens) and b=N (down tiles); a=65,b=65
# runs every V3 item (<= 64 tokens) on AVX512. Three processes, the variants in three orders. Then the old/new step
# kernel once more with more calls (o=1: base's kernel, u=1: one-row unpack), base/new pairs.
set -uo pipefail
t0=$SECONDS
D=.device-carry/prefill11
o=$OUT/prefill11b; mkdir -p $o
B=/tmp/prefill11-bin2; mkdir -p $B
xz -dc $D/kt-bench.xz > $B/kt-bench-new; xz -dc $D/kt-bench-x2.xz > $B/kt-bench-x2
xz -dc .device-carry/s11base/kt-bench.xz > $B/kt-bench-base
chmod +x $B/kt-bench-*
cp $D/COMMIT $o/ 2>/dev/null
left() { [ $((SECONDS - t0)) -lt $1 ]; }
log() { echo "$* (at $((SECONDS - t0)) s)" | tee -a $o/log.txt; }
m() { # m BIN TAG TIMEOUT ARGS...: one kt-bench moe process; its JSON lines tagged bin, tag, process s
  local b=$1 r=$2 to=$3; shift 3
  local s0=$(date +%s%N)
  local j; j=$(timeout $to $B/kt-bench-$b moe "$@" --json --cpu-time 2>>$o/err.txt)
  local rc=$? w; w=$(( ($(date +%s%N) - s0) / 1000000 )); w=$((w / 1000)).$(printf %03d $((w % 1000)))
  [ -n "$j" ] && echo "$j" | sed "s/^{/{\"bin\":\"$b\",\"tag\":\"$r\",\"env\":\"\",\"process_s\":$w,/" >> $o/moe.jsonl
  log "moe $b $r $* rc $rc process ${w}s"
}
V3="--shape deepseek-v3 --format q4_k --tokens 512 --threads 16"
V2I="--shape deepseek-v2-lite --format int4 --group 128 --tokens 512 --threads 16"
A="--x a=12 --x a=14,b=14 --x a=17,b=17 --x a=21,b=21 --x a=65,b=65 --x a=17 --x b=17"
R="--x b=17 --x a=17 --x a=65,b=65 --x a=21,b=21 --x a=17,b=17 --x a=14,b=14 --x a=12"
S="--x a=17,b=17 --x a=65,b=65 --x a=12 --x b=17 --x a=21,b=21 --x a=17 --x a=14,b=14"
left 30 && m x2 amin1 30 $V3 --seconds 0 --calls 10 $A
left 60 && m x2 amin2 30 $V3 --seconds 0 --calls 10 $R
left 80 && m x2 kern1 25 $V3 --seconds 0 --calls 16 --x o=0 --x o=1 --x u=1
for b in base new; do left 100 && m $b ab1 15 $V3 --seconds 1; done
left 110 && m x2 amin3 30 $V3 --seconds 0 --calls 10 $S
left 135 && m x2 kern2 25 $V3 --seconds 0 --calls 16 --x u=1 --x o=1 --x o=0
for b in new base; do left 140 && m $b ab2 15 $V3 --seconds 1; done
for b in base new; do left 146 && m $b ab 12 $V2I --seconds 1; done
# the threshold at fewer threads (AMX from 12 vs every V3 item on AVX512)
left 150 && m x2 amin_t4 15 --shape deepseek-v3 --format q4_k --tokens 512 --threads 4 --seconds 0 --calls 3 --x a=12 --x a=65,b=65
left 160 && m x2 amin_t1 25 --shape deepseek-v3 --format q4_k --tokens 512 --threads 1 --seconds 0 --calls 2 --x a=12 --x a=65,b=65
python3 - "$o" <<'PY' | tee $o/summary.txt
import json, sys, collections
o = sys.argv[1]
ph = ["route", "gate/up", "quant", "down", "combine"]
by = collections.defaultdict(list)
try:
    for l in open(f"{o}/moe.jsonl"):
        j = json.loads(l)
        if j.get("xphases"):
            print("   phases", j["tag"], j.get("spec") or "-", " ".join("%s %.2f" % (ph[i], j["phase_ms"][i]) for i in range(5)))
            continue
        v = j.get("prefetch") or j["bin"]
        by[(j["shape"], v)].append(j["ms_per_call"])
        print("moe", j["bin"], j["tag"], v, j["shape"], j["gate"], j["isa"], "thr %2d" % j["threads"],
              "%8.3f ms" % j["ms_per_call"], "cpu %7.1f ms" % (j.get("cpu_ms_per_call") or 0),
              "dram %5.1f" % j["dram_gbps"], "process %.1f s" % j["process_s"])
    for k in sorted(by):
        print("by variant", k, ["%.2f" % x for x in by[k]], "mean %.2f" % (sum(by[k]) / len(by[k])))
except Exception as e:
    print("moe.jsonl error", e)
PY
log done
