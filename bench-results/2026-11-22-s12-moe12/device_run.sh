#!/usr/bin/env bash
# moe12 device script (session 12, issue 4: V3 Q4_K 512 on AMX at 16 threads). Reads .device-carry/moe12 and
# .device-carry/s12base (base kt-bench); writes $OUT/moe12/ (summary.txt at the end). <= ~190 s wall (time guards).
# Binaries: new = branch moe12 (COMMIT; kt-bench --release --features cuda, stripped): the AMX Q4_K GEMM takes the
# folded step kernel (2 C tiles a 16x16x256 step, sub-block scales folded into the unpacked weights) from the AMX
# threshold (12 tokens) on, instead of the per-sub-block kernel (8 C tiles, 8 half-K products) up to 64 tokens:
# tile ops per step 40 -> 24 (C stores 8 -> 2). base = s12base (main 54a8a0b).
# x = base code + throwaway knobs (bench-results/2026-11-22-s12-moe12/x_binary_knobs.patch): --x SPEC variants take
# turns per call in one process; f=N: Q4_K tiles of more than N tokens take the folded kernel (64 = base, 11 = new),
# t=N: longest AMX Q4_K tail split off to AVX512 (4 = base), a=N: Q4_K tiles of fewer tokens go to AVX512 (12 = base).
# x runs without --cpu-time (no per-call /proc reads between calls).
set -uo pipefail
t0=$SECONDS
D=.device-carry/moe12
o=$OUT/moe12; mkdir -p $o/tests
B=/tmp/moe12-bin; mkdir -p $B/tests
xz -dc $D/kt-bench.xz > $B/kt-bench-new; xz -dc $D/kt-bench-x.xz > $B/kt-bench-x
xz -dc .device-carry/s12base/kt-bench.xz > $B/kt-bench-base
chmod +x $B/kt-bench-*; tar xJf $D/tests.tar.xz -C $B/tests
cp $D/COMMIT $o/ 2>/dev/null
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
# 1. the new kernel choice's AMX paths (Q4_K GEMM at 12..64 tokens now folded; the MoE operator on AMX)
for n in moe_q4k_amx cpu_amx_gemm; do left 30 && t $n 20; done
# 2. in-process A/B (x), V3 512 at 16 threads, one call a variant in turn; three orders
left 60 && m x xab1 25 $V3 --seconds 0 --calls 10 --x f=64 --x f=11 --x f=16 --x f=11,t=0 --x f=11,a=10
# 3. separate processes, base and new interleaved x3 (--cpu-time)
for b in base new new base base new; do left 95 && m $b ab 15 $V3 --seconds 1 --cpu-time; done
left 110 && m x xab2 25 $V3 --seconds 0 --calls 10 --x f=11,a=10 --x f=11,t=0 --x f=16 --x f=11 --x f=64
# 4. V2-Lite int4 g128 512 (repacked kernel, unchanged): base and new interleaved
for b in new base base new; do left 135 && m $b ab 12 $V2I --seconds 1 --cpu-time; done
left 150 && m x xab3 25 $V3 --seconds 0 --calls 10 --x f=11 --x f=64 --x f=11,a=10 --x f=11,t=0 --x f=16
# 5. the other AMX / MoE tests
for n in matmul_backends moe_api moe_repacked_kernels moe_repacked_fold moe_repacked_layouts moe_repacked_moe moe_correctness; do
  t $n 25
done
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
