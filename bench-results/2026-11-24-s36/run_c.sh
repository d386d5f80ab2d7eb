#!/usr/bin/env bash
# Session 36 call C (experiment build, x36_read_work.patch with works 5, 6): how much ymm arithmetic a plain read
# carries for free (KT_X_WORKS=6: 5 = twice work 3's ymm arithmetic a line, 6 = four times), and the AVX2 (256-bit)
# one-token kernels against the AVX512 ones, processes in turn (KT_ISA), each against the read forms in its process.
set -uo pipefail
C=$OUT/c; mkdir -p $C; trap 'cd $OUT && tar czf c.tgz c && rm -rf c' EXIT
N=/tmp/kt-c; mkdir -p $N; tar xJf .device-carry/s36/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $C/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s36/COMMIT)"
moe() { # tag shape seconds [env...]
  local s0=$SECONDS
  env "${@:4}" timeout 200 $N/kt-bench moe --shape $2 --format q4_k --tokens 1 --threads 16 --seconds $3 --ceiling --json \
    > $C/moe_$1.jsonl 2> $C/moe_$1.err
  log "moe $1 rc $? wall $((SECONDS-s0))s"
  grep '^XW' $C/moe_$1.err | tee -a $C/summary.txt
  python3 - $C/moe_$1.jsonl <<'PY' | tee -a $C/summary.txt
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print("  %-50s %.4f ms  %6.1f GB/s  start %3.0f%% (probe %.1f)  beside %s  of ceiling %s" % (
        r.get("read_ceiling") or ("operator " + r["isa"]), r["ms_per_call"], r["weight_gbps"], 100 * r["bandwidth_fraction"],
        r["dram_gbps"],
        "%.0f%%" % (100 * r["bandwidth_fraction_paired"]) if r.get("bandwidth_fraction_paired") else "-",
        "%.0f%%" % (100 * r["of_read_ceiling"]) if r.get("of_read_ceiling") else "-"))
PY
}
mm() { # tag seconds [env...]
  local s0=$SECONDS
  env "${@:3}" timeout 240 $N/kt-bench matmul --formats q4_k,q6_k --shapes 2048x7168,7168x2048 --tokens 1 \
    --threads 16 --seconds $2 --ceiling --json > $C/mm_$1.jsonl 2> $C/mm_$1.err
  log "matmul $1 rc $? wall $((SECONDS-s0))s"
  grep '^XW' $C/mm_$1.err | tee -a $C/summary.txt
  python3 - $C/mm_$1.jsonl <<'PY' | tee -a $C/summary.txt
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    if "skipped" in r: continue
    c = max(r["read_ceiling"], key=lambda f: f["weight_gbps"])
    p = lambda f: "%.0f%%" % (100 * f) if f else "-"
    print("  %-5s %5dx%-5d %.4f ms %6.1f GB/s beside %4s | ceiling %-30s x%d beside %4s | of ceiling %3.0f%%" % (
        r["format"], r["rows"], r["cols"], r["ms_per_call"], r["weight_gbps"], p(r.get("bandwidth_fraction_paired")),
        c["pattern"], c["items_per_thread"], p(c.get("bandwidth_fraction_paired")), 100 * r["of_read_ceiling"]))
PY
}
moe v3w deepseek-v3 8 KT_X_WORKS=6
moe v3_avx2_1 deepseek-v3 6 KT_ISA=avx2
moe v3_avx512_1 deepseek-v3 6 KT_ISA=avx512
moe v2l_avx2 deepseek-v2-lite 5 KT_ISA=avx2
moe v2l_avx512 deepseek-v2-lite 5 KT_ISA=avx512
mm avx2 2 KT_ISA=avx2
mm avx512 2 KT_ISA=avx512
moe v3_avx2_2 deepseek-v3 6 KT_ISA=avx2
moe v3_avx512_2 deepseek-v3 6 KT_ISA=avx512
log done
