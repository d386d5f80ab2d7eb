#!/usr/bin/env bash
# kqamx device call (session 6): the AMX Q4_K GEMM with two step kernels (per sub-block up to
# 32 tokens, folded scales above) against main's HEAD (s6base), interleaved x3 at 16 threads;
# the folded-only kernel (kqamx commit d37a543) beside them for the V3 MoE; the AMX test binaries.
# Carry: .device-carry/kqamx and .device-carry/s6base. Whole script <= 400 s (time guard per step).
set -uo pipefail
t0=$SECONDS
B=/tmp/kqamx-bin; mkdir -p $B && tar xJf .device-carry/kqamx/bin.tar.xz -C $B
cp .device-carry/s6base/kt-bench $B/kt-bench-base
o=$OUT/kqamx; mkdir -p $o/tests
trap 'cd $OUT && tar czf kqamx.tgz kqamx' EXIT
left() { [ $((SECONDS - t0)) -lt $1 ]; }
log() { echo "$* (at $((SECONDS - t0)) s)" | tee -a $o/log.txt; }
timeout 30 $B/kt-bench-new machine --threads 16 --json > $o/machine.json 2>&1
nproc >> $o/log.txt; lscpu | grep -E "Model name|Flags" | cut -c1-300 >> $o/log.txt
# 1. V3 MoE prefill (Q4_K as stored, 512 tokens, ~16 tokens per expert: the per-sub-block kernel
#    in "new"), base/new x3 and folded x2, interleaved.
for i in 1 2 3; do for v in base new folded; do
  [ $v = folded ] && [ $i = 3 ] && continue
  left 180 || { log "v3 $v $i skipped"; continue; }
  timeout 60 $B/kt-bench-$v moe --shape deepseek-v3 --format q4_k --tokens 512 --threads 16 --seconds 1 --json 2>>$o/err.txt \
    | sed "s/^{/{\"bin\":\"$v\",\"round\":$i,/" >> $o/moe_v3.jsonl; log "v3 $v $i rc ${PIPESTATUS[0]}"
done; done
# 2. Test binaries of the kqamx branch (each bounded by what is left of 280 s).
for n in cpu_amx_gemm moe_q4k_amx matmul_backends moe_correctness; do
  rest=$((280 - (SECONDS - t0))); [ $rest -gt 5 ] || { log "test $n skipped"; continue; }
  timeout $((rest < 60 ? rest : 60)) $B/tests/$n --test-threads 8 > $o/tests/$n.txt 2>&1
  log "test $n rc $? $(grep -E '^test result' $o/tests/$n.txt | tail -1)"
done
# 3. GEMM at 512 tokens (the folded kernel in "new"), and the VNNI path beside it once.
for i in 1 2 3; do for v in base new; do
  left 320 || { log "gemm $v $i skipped"; continue; }
  timeout 40 $B/kt-bench-$v matmul --tokens 512 --formats q4_k --threads 16 --seconds 0.3 --json \
    --shapes 7168x2048,2048x7168,1408x2048,18432x7168 2>>$o/err.txt \
    | sed "s/^{/{\"bin\":\"$v\",\"round\":$i,/" >> $o/gemm512.jsonl; log "gemm $v $i rc ${PIPESTATUS[0]}"
done; done
left 335 && { KT_ISA=avx512 timeout 25 $B/kt-bench-new matmul --tokens 512 --formats q4_k --threads 16 --seconds 0.3 \
  --json --shapes 7168x2048,2048x7168 2>>$o/err.txt | sed 's/^{/{"bin":"new-avx512",/' >> $o/gemm512.jsonl; log "gemm avx512 rc ${PIPESTATUS[0]}"; }
# 4. V2-Lite MoE prefill (~48 tokens per expert: the folded kernel in "new").
for i in 1 2 3; do for v in base new; do
  left 360 || { log "v2l $v $i skipped"; continue; }
  timeout 25 $B/kt-bench-$v moe --shape deepseek-v2-lite --format q4_k --tokens 512 --threads 16 --seconds 1 --json 2>>$o/err.txt \
    | sed "s/^{/{\"bin\":\"$v\",\"round\":$i,/" >> $o/moe_v2l.jsonl; log "v2l $v $i rc ${PIPESTATUS[0]}"
done; done
python3 - "$o" <<'PY' | tee $o/summary.txt
import json, sys, collections
o = sys.argv[1]
for f, keys in (("moe_v3", ("ms_per_call", "tflops")), ("moe_v2l", ("ms_per_call", "tflops"))):
    try:
        for l in open(f"{o}/{f}.jsonl"):
            j = json.loads(l); print(f, j["bin"], j.get("round"), j.get("isa"), *(round(j[k], 3) for k in keys))
    except Exception as e: print(f, "error", e)
try:
    for l in open(f"{o}/gemm512.jsonl"):
        j = json.loads(l)
        print("gemm512", j["bin"], j.get("round"), f'{j["rows"]}x{j["cols"]}', j["isa"], round(j["ms_per_call"], 3),
              "peak_frac", round(j["peak_fraction"], 3))
except Exception as e: print("gemm512 error", e)
PY
log done
