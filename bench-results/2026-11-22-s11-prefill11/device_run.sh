#!/usr/bin/env bash
# prefill11 device script (session 11, issue 4: MoE prefill on AMX). Reads only .device-carry/prefill11 and
# .device-carry/s11base; writes $OUT/prefill11/ (summary.txt first). Whole script <= ~190 s (time guards).
# Binaries: new = branch prefill11 (COMMIT; kt-bench --release --features cuda, stripped): the AMX Q4_K per-sub-block
# step kernel (V3 prefill) takes the minimum term as one exact tdpbf16ps product and unpacks two rows' scales per
# 512-bit pass; kt-bench moe takes a --threads LIST (a sweep in one process) and --calls. base = s11base (main cd4ad61).
# x = new + throwaway knobs and phase timers (bench-results/2026-11-22-s11-prefill11/x_binary_knobs.patch): --x SPEC
# variants take turns per call in one process; SPEC = m=HEXMASK (pool threads in the mask run busy items on the AVX512
# kernels), o=1 (base's per-sub-block kernel), u=1 (new kernel with the one-row-at-a-time unpack), pf=G:lN (repacked
# prefetch). Each x run prints {"xphases":...}: ms per call of each phase (route+quantize+gather, gate/up, quantize
# intermediate, down, combine) and busy ms summed over threads; KT_X_AMXPEAK=1 prints each pool's AMX tile peak.
# Order (by importance; time guards drop the later ones): topology, AMX tests of the new kernel, AMX tile peak per
# thread count, V3 x in-process A/B (old/new kernel, AMX/AVX512 thread mixes), V3 thread sweep 16..1, V3 base/new x2,
# V2-Lite sweep, x variants and a base/new pair, AVX512 sweeps (16, 8), moe_api and moe_correctness if time is left.
set -uo pipefail
t0=$SECONDS
D=.device-carry/prefill11
o=$OUT/prefill11; mkdir -p $o/tests
B=/tmp/prefill11-bin; mkdir -p $B/tests
xz -dc $D/kt-bench.xz > $B/kt-bench-new; xz -dc $D/kt-bench-x.xz > $B/kt-bench-x
xz -dc .device-carry/s11base/kt-bench.xz > $B/kt-bench-base
chmod +x $B/kt-bench-*; tar xJf $D/tests.tar.xz -C $B/tests
cp $D/COMMIT $o/ 2>/dev/null
left() { [ $((SECONDS - t0)) -lt $1 ]; }
log() { echo "$* (at $((SECONDS - t0)) s)" | tee -a $o/log.txt; }
{ nproc; lscpu; lscpu -e; grep . /sys/devices/system/cpu/cpu*/topology/thread_siblings_list;
  grep -m1 MHz /proc/cpuinfo; cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq 2>/dev/null; } > $o/topology.txt 2>&1
m() { # m BIN TAG TIMEOUT ARGS...: one kt-bench moe process (env XENV); its JSON lines tagged bin, tag, env, process s
  local b=$1 r=$2 to=$3; shift 3
  local s0=$(date +%s%N)
  local j; j=$(env ${XENV:-} timeout $to $B/kt-bench-$b moe "$@" --json --cpu-time 2>>$o/err.txt)
  local rc=$? w; w=$(( ($(date +%s%N) - s0) / 1000000 )); w=$((w / 1000)).$(printf %03d $((w % 1000)))
  [ -n "$j" ] && echo "$j" | sed "s/^{/{\"bin\":\"$b\",\"tag\":\"$r\",\"env\":\"${XENV:-}\",\"process_s\":$w,/" >> $o/moe.jsonl
  log "moe $b $r ${XENV:-} $* rc $rc process ${w}s"
}
t() { # t NAME CAP: one test binary, at most CAP s and what is left before 186 s
  local rest=$((186 - (SECONDS - t0))); [ $rest -gt 5 ] || { log "test $1 skipped"; return; }
  timeout $((rest < $2 ? rest : $2)) $B/tests/$1 --test-threads 16 > $o/tests/$1.txt 2>&1
  log "test $1 rc $? $(grep -E '^test result' $o/tests/$1.txt | tail -1)"
}
V3="--shape deepseek-v3 --format q4_k --tokens 512"
V2I="--shape deepseek-v2-lite --format int4 --group 128 --tokens 512"
# 1. the new kernel's AMX paths (Q4_K GEMM at 12..64 tokens, the MoE operator on AMX)
for n in cpu_amx_gemm moe_q4k_amx matmul_backends; do left 30 && t $n 15; done
# 1b. the AMX tile peak per thread count (x, KT_X_AMXPEAK: 4 independent tdpbusd chains a thread, no memory; 3
# rounds a count) beside each count's VNNI peak probe: does a pair of vCPUs share one AMX unit?
left 40 && XENV="KT_X_AMXPEAK=1" m x amxpeak 20 --shape deepseek-v3 --format q4_k --tokens 1 --threads 16,8,4,2,1 --seconds 0 --calls 1
# 2. x: in-process A/B at 16 threads, one call per variant in turn (o=1: base's kernel)
left 60 && m x xab 30 $V3 --threads 16 --seconds 0 --calls 8 --x o=0 --x o=1 --x u=1 --x m=aaaa --x m=ff00
# 3. thread sweeps (x at its defaults = new + timers), largest count first (its warm-up calls are the cheap ones)
left 80 && m x sweep 45 $V3 --threads 16,14,12,8,4,2,1 --seconds 0 --calls 3
# 4. A/B at 16 threads, base and new interleaved
for b in base new new base; do left 125 && m $b ab 20 $V3 --threads 16 --seconds 1; done
# 5. V2-Lite int4 (no changed code): sweep, in-process variants, one base/new pair
left 138 && m x sweep 25 $V2I --threads 16,14,12,8,4,2,1 --seconds 0 --calls 8
left 150 && m x xab 20 $V2I --threads 16 --seconds 2 --calls 20 --x m=0 --x m=aaaa --x m=ff00 --x pf=4:l1 --x pf=2:l2
for b in new base; do left 160 && m $b ab 15 $V2I --threads 16 --seconds 1; done
# 6. AVX512 forced
left 168 && XENV="KT_ISA=avx512" m x sweep512 20 $V3 --threads 16,8 --seconds 0 --calls 4
left 176 && XENV="KT_ISA=avx512" m x sweep512 12 $V2I --threads 16,8 --seconds 0 --calls 8
left 178 && t moe_api 8
t moe_correctness 40
python3 - "$o" <<'PY' | tee $o/summary.txt
import json, sys
o = sys.argv[1]
ph = ["route+gather", "gate/up", "quant inter", "down", "combine"]
try:
    last = None
    for l in open(f"{o}/moe.jsonl"):
        j = json.loads(l)
        if j.get("amxpeak"):
            print("amxpeak T%d round %d: AMX %.1f TOP/s (%.2f a thread), VNNI probe %.2f TOP/s" % (
                j["threads"], j["round"], j["amx_tops"], j["amx_tops"] / j["threads"], j["vnni_tops"]))
            continue
        if j.get("xphases"):
            n = j["threads"]; pm = j["phase_ms"]; bm = j["busy_ms"]
            util = ["%s %.2f ms (busy %.0f%%)" % (ph[i], pm[i], 100 * bm[i] / n / pm[i]) if i in (1, 3) and pm[i] > 0
                    else "%s %.2f" % (ph[i], pm[i]) for i in range(5)]
            print("   phases", j["bin"], j["tag"], "T%d" % n, j.get("spec") or "-", "; ".join(util))
            continue
        print("moe", j["bin"], j["tag"], j["env"] or "-", j.get("prefetch") or "-", j["shape"], j["gate"], j["isa"],
              "thr %2d" % j["threads"], "%8.3f ms" % j["ms_per_call"], "cpu %7.1f ms" % (j.get("cpu_ms_per_call") or 0),
              "cpu/thr %6.1f" % ((j.get("cpu_ms_per_call") or 0) / j["threads"]),
              "dram %5.1f" % j["dram_gbps"], "w %5.1f GB/s" % j["weight_gbps"], "peak %.2f TOP/s" % j["peak_tops"],
              "process %.1f s" % j["process_s"])
except Exception as e:
    print("moe.jsonl error", e)
PY
grep -E "Model name|Thread|Core|Socket|L2|L3" $o/topology.txt | tee -a $o/summary.txt
log done
