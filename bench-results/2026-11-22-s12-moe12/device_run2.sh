#!/usr/bin/env bash
# moe12 second device script (session 12, issue 4: V3 Q4_K 512 on AMX at 16 threads). Reads .device-carry/moe12 and
# .device-carry/s12base (base kt-bench); writes $OUT/moe12b/ (summary.txt at the end). <= ~190 s wall (time guards).
# Call 1 found: the folded Q4_K step kernel for every AMX tile (f=11) 5-7% slower than base's per-sub-block one in one
# process, but with the AMX threshold at 10 tokens (f=11,a=10) 6-12% faster than f=11 at 12. So here the threshold
# with base's kernel: new2 = branch moe12 (COMMIT2): AMX Q4_K from 10 tokens (was 12), per-sub-block kernel as base.
# x2 = 2007813 + x2_binary_knobs.patch (at its defaults base's kernels and plan): --x SPEC variants take turns per
# call in one process; f=N: Q4_K tiles of more than N tokens take the folded kernel (64 = base), a=N: Q4_K tiles of
# fewer tokens go to AVX512 (12 = base), t=N: longest AMX Q4_K tail split off to AVX512 (4 = base; at most a-1).
# x2 runs without --cpu-time.
set -uo pipefail
t0=$SECONDS
D=.device-carry/moe12
o=$OUT/moe12b; mkdir -p $o/tests
B=/tmp/moe12-bin2; mkdir -p $B/tests
xz -dc $D/kt-bench2.xz > $B/kt-bench-new2; xz -dc $D/kt-bench-x2.xz > $B/kt-bench-x2
xz -dc .device-carry/s12base/kt-bench.xz > $B/kt-bench-base
chmod +x $B/kt-bench-*; tar xJf $D/tests2.tar.xz -C $B/tests
cp $D/COMMIT2 $o/ 2>/dev/null
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
left() { [ $((SECONDS - t0)) -lt $1 ]; }
log() { echo "$* (at $((SECONDS - t0)) s)" | tee -a $o/log.txt; }
m() { # m BIN TAG TIMEOUT ARGS...: one kt-bench moe process; its JSON lines tagged bin, tag, process s
  local b=$1 r=$2 to=$3; shift 3
  local s0=$(date +%s%N)
  local j; j=$(timeout $to $B/kt-bench-$b moe "$@" --json 2>>$o/err.txt)
  local rc=$? w; w=$(( ($(date +%s%N) - s0) / 1000000 )); w=$((w / 1000)).$(printf %03d $((w % 1000)))
  [ -n "$j" ] && echo "$j" | sed "s/^{/{\"bin\":\"$b\",\"tag\":\"$r\",\"process_s\":$w,/" >> $o/moe.jsonl
  log "moe $b $r $* rc $rc process ${w}s"
}
t() { # t NAME CAP: one test binary, at most CAP s and what is left before 188 s
  local rest=$((188 - (SECONDS - t0))); [ $rest -gt 5 ] || { log "test $1 skipped"; return; }
  timeout $((rest < $2 ? rest : $2)) $B/tests/$1 --test-threads 16 > $o/tests/$1.txt 2>&1
  log "test $1 rc $? $(grep -E '^test result' $o/tests/$1.txt | tail -1)"
}
{ nproc; lscpu | grep -E 'Model name|MHz|L2|L3|Thread|Core'; } > $o/topology.txt 2>&1
V3="--shape deepseek-v3 --format q4_k --tokens 512 --threads 16"
V2I="--shape deepseek-v2-lite --format int4 --group 128 --tokens 512 --threads 16"
# 1. the AMX Q4_K GEMM and MoE at 9..12 tokens (new2's threshold 10)
for n in moe_q4k_amx cpu_amx_gemm; do left 30 && t $n 20; done
# 2. in-process A/B (x2), V3 512 at 16 threads, one call a variant in turn; four orders
X1="--x f=64 --x a=10 --x a=8 --x a=6 --x a=10,t=6 --x a=10,t=8 --x f=11,a=8"
X2="--x a=10,t=8 --x f=11,a=8 --x a=6 --x f=64 --x a=8 --x a=10,t=6 --x a=10"
X3="--x a=8 --x a=10,t=6 --x f=64 --x f=11,a=8 --x a=10 --x a=10,t=8 --x a=6"
X4="--x a=10,t=6 --x a=6 --x a=10 --x a=10,t=8 --x f=64 --x a=8 --x f=11,a=8"
left 60 && m x2 xab1 25 $V3 --seconds 0 --calls 8 $X1
# 3. separate processes, base and new2 interleaved x3 (--cpu-time)
for b in base new2 new2 base base new2; do left 95 && m $b ab 15 $V3 --seconds 1 --cpu-time; done
left 110 && m x2 xab2 25 $V3 --seconds 0 --calls 8 $X2
# 4. V2-Lite int4 g128 512 (repacked kernel, unchanged): base and new2 interleaved
for b in new2 base base new2; do left 128 && m $b ab 12 $V2I --seconds 1 --cpu-time; done
left 140 && m x2 xab3 25 $V3 --seconds 0 --calls 8 $X3
# 5. the other AMX / MoE tests
for n in matmul_backends moe_api moe_correctness; do t $n 25; done
left 160 && m x2 xab4 25 $V3 --seconds 0 --calls 8 $X4
python3 - "$o" <<'PY' | tee $o/summary.txt
import json, sys, collections
o = sys.argv[1]
by = collections.defaultdict(list)
try:
    for l in open(f"{o}/moe.jsonl"):
        j = json.loads(l)
        v = j.get("prefetch") or j["bin"]
        by[(j["shape"], v)].append(j["ms_per_call"])
        cpu = j.get("cpu_ms_per_call")
        print("moe %-4s %-5s %-12s %-16s %s thr %2d %8.3f ms %s dram %5.1f process %.1f s" % (
            j["bin"], j["tag"], v, j["shape"], j["isa"], j["threads"], j["ms_per_call"],
            ("cpu %7.1f ms" % cpu) if cpu else "cpu       - ms", j["dram_gbps"], j["process_s"]))
    for k in sorted(by):
        x = by[k]
        print("by variant", k, " ".join("%.2f" % v for v in x), "mean %.2f min %.2f max %.2f" % (
            sum(x) / len(x), min(x), max(x)))
except Exception as e:
    print("moe.jsonl error", e)
PY
grep -H "^test result:" $o/tests/*.txt | sed "s|.*/tests/||" | tee -a $o/summary.txt
log done
