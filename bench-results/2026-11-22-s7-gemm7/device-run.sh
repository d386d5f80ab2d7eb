#!/usr/bin/env bash
# gemm7 device call (session 7): AMX K-quant GEMM (Q4_K pipeline made format-generic; new AMX
# step kernels for Q5_K, Q2_K, Q6_K; eight token groups per token block) against main at the
# session's start (s7base), interleaved x2 at 16 threads, 512 tokens; then the cpu_amx_gemm test
# binary; then a small-token sweep (AMX vs AVX512 in the new binary; Q4_K at 16 tokens new vs base,
# the MoE's per-expert size). Carry: .device-carry/gemm7 and .device-carry/s7base.
# Whole script <= 240 s (a time guard per step, a timeout per sub-run); results in $OUT/gemm7.tgz.
set -uo pipefail
t0=$SECONDS
B=/tmp/gemm7-bin; mkdir -p $B && tar xJf .device-carry/gemm7/bin.tar.xz -C $B
cp .device-carry/s7base/kt-bench $B/kt-bench-base
o=$OUT/gemm7; mkdir -p $o
trap 'cd $OUT && tar czf gemm7.tgz gemm7' EXIT
left() { [ $((SECONDS - t0)) -lt $1 ]; }
log() { echo "$* (at $((SECONDS - t0)) s)" | tee -a $o/log.txt; }
nproc >> $o/log.txt; lscpu | grep -E "Model name|Thread|Core|Socket|MHz" >> $o/log.txt
cat .device-carry/gemm7/COMMIT >> $o/log.txt 2>/dev/null
SH=7168x2048,2048x7168,1408x2048,18432x7168
# 1. The issue's GEMM command, base/new interleaved x2.
for i in 1 2; do for v in base new; do
  left 150 || { log "gemm $v $i skipped"; continue; }
  timeout 50 $B/kt-bench-$v matmul --tokens 512 --formats q4_k,q5_k,q2_k,q6_k --shapes $SH --threads 16 \
    --seconds 0.4 --json 2>>$o/err.txt | sed "s/^{/{\"bin\":\"$v\",\"round\":$i,/" >> $o/gemm512.jsonl
  log "gemm $v $i rc ${PIPESTATUS[0]}"
done; done
# 2. The test binary (AMX paths of the four K-quants, BF16, Q8_0 against the scalar backend).
rest=$((200 - (SECONDS - t0))); if [ $rest -gt 10 ]; then
  timeout $((rest < 60 ? rest : 60)) $B/cpu_amx_gemm --test-threads 16 > $o/test_cpu_amx_gemm.txt 2>&1
  log "test cpu_amx_gemm rc $? $(grep -E '^test result' $o/test_cpu_amx_gemm.txt | tail -1)"
else log "test skipped"; fi
# 3. Small token counts: new AMX vs new AVX512 (thresholds), and Q4_K new vs base at 16 tokens.
for v in amx avx512; do
  left 195 || { log "sweep $v skipped"; continue; }
  KT_ISA=$v timeout 25 $B/kt-bench-new matmul --tokens 16,32,64 --formats q4_k,q5_k,q2_k,q6_k \
    --shapes 7168x2048,2048x7168 --threads 16 --seconds 0.15 --json 2>>$o/err.txt \
    | sed "s/^{/{\"bin\":\"new-$v\",/" >> $o/sweep.jsonl; log "sweep $v rc ${PIPESTATUS[0]}"
done
for v in base new; do
  left 215 || { log "q4k16 $v skipped"; continue; }
  timeout 12 $B/kt-bench-$v matmul --tokens 16 --formats q4_k --shapes $SH --threads 16 --seconds 0.2 --json \
    2>>$o/err.txt | sed "s/^{/{\"bin\":\"$v\",/" >> $o/q4k16.jsonl; log "q4k16 $v rc ${PIPESTATUS[0]}"
done
python3 - "$o" <<'PY' | tee $o/summary.txt
import json, sys
o = sys.argv[1]
for f in ("gemm512", "sweep", "q4k16"):
    try:
        for l in open(f"{o}/{f}.jsonl"):
            j = json.loads(l)
            print(f, j["bin"], j.get("round", ""), j["format"], f'{j["rows"]}x{j["cols"]}', j["tokens"], j["isa"],
                  round(j["ms_per_call"], 3), "peak_frac", round(j["peak_fraction"], 3), "peak_gops", round(j["peak_gops"]))
    except Exception as e: print(f, "error", e)
PY
log done
