#!/usr/bin/env bash
# gemm8 device call (session 8): AMX K-quant GEMM with activations transposed once per call
# (shared records) and balanced items, against main at the session's start (s8base), 16 threads.
# new = branch gemm8 (COMMIT: records + balanced items + quantization in the records pass),
# rec = the shared records only (f9266dc: old items, separate quantization pass).
# Carry: .device-carry/gemm8 and .device-carry/s8base. Whole script <= 235 s (a guard per step,
# a timeout per sub-run); results in $OUT/gemm8.tgz (written at EXIT).
set -uo pipefail
t0=$SECONDS
B=/tmp/gemm8-bin; mkdir -p $B && tar xJf .device-carry/gemm8/bin.tar.xz -C $B
cp .device-carry/s8base/kt-bench $B/kt-bench-base
o=$OUT/gemm8; mkdir -p $o
trap 'cd $OUT && tar czf gemm8.tgz gemm8' EXIT
left() { [ $((SECONDS - t0)) -lt $1 ]; }
log() { echo "$* (at $((SECONDS - t0)) s)" | tee -a $o/log.txt; }
nproc >> $o/log.txt; lscpu | grep -E "Model name|Thread|Core|Socket|MHz|L2|L3" >> $o/log.txt
cat .device-carry/gemm8/COMMIT >> $o/log.txt 2>/dev/null
exe() { case $1 in base) echo $B/kt-bench-base;; rec) echo $B/kt-bench-rec;; *) echo $B/kt-bench;; esac; }
mm() { local v=$1 tag=$2 lim=$3; shift 3
  timeout $lim $(exe $v) matmul "$@" --threads 16 --json 2>>$o/err.txt \
    | sed "s/^{/{\"bin\":\"$v\",\"tag\":\"$tag\",/" >> $o/$tag.jsonl
  log "$tag $v rc ${PIPESTATUS[0]}"; }
SH=7168x2048,2048x7168,1408x2048,18432x7168
SHR=2048x7168,1408x2048,18432x7168,7168x2048   # round 2: 7168x2048 not the process's first case
# 1. 16 tokens (the MoE's per-expert size; Q4_K 7168x2048 was the regression), interleaved x2.
for i in 1 2; do s=$SH; [ $i = 2 ] && s=$SHR
  for v in base new rec; do left 70 || { log "t16 $v $i skipped"; continue; }
    mm $v t16 20 --tokens 16 --formats q4_k,q5_k,q2_k --shapes $s --seconds 0.2; done; done
# 2. The issue's GEMM command at 512 tokens, interleaved x2.
for i in 1 2; do for v in base new; do left 150 || { log "t512 $v $i skipped"; continue; }
  mm $v t512 30 --tokens 512 --formats q4_k,q5_k,q2_k,q6_k --shapes $SH --seconds 0.25; done; done
# 3. The tests of the AMX paths and the driver.
for t in cpu_amx_gemm matmul_backends; do left 180 || { log "test $t skipped"; continue; }
  timeout 40 $B/$t --test-threads 16 > $o/test_$t.txt 2>&1
  log "test $t rc $? $(grep -E '^test result' $o/test_$t.txt | tail -1)"; done
# 4. GEMV (1 token; driver unchanged by this branch), interleaved while time is left.
for i in 1 2; do for v in base new; do left 212 || { log "t1 $v $i skipped"; continue; }
  mm $v t1 20 --tokens 1 --formats q4_k,q5_k,q2_k,q6_k --shapes $SH,7168x18432 --seconds 0.1; done; done
python3 - "$o" <<'PY' > $o/summary.txt 2>&1
import json, sys, collections
o = sys.argv[1]
for tag in ("t16", "t512", "t1"):
    rows = collections.defaultdict(list)
    try:
        for l in open(f"{o}/{tag}.jsonl"):
            j = json.loads(l)
            if "ms_per_call" not in j: continue
            frac = j["bandwidth_fraction"] if tag == "t1" else j["peak_fraction"]
            rows[(j["format"], f'{j["rows"]}x{j["cols"]}')].append((j["bin"], round(j["ms_per_call"], 4), round(100 * frac)))
    except Exception as e: print(tag, "error", e)
    print(f"== {tag}: ms_per_call (% of {'DRAM bw' if tag == 't1' else 'int8 peak'}) in run order")
    for k, v in rows.items(): print(*k, " ".join(f"{b}:{ms}({f}%)" for b, ms, f in v))
PY
cat $o/summary.txt; log done
