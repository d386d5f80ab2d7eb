#!/usr/bin/env bash
# Session 36 call B (experiment build, x36_read_work.patch): does arithmetic slow a plain read? The read form
# "8 streams, prefetch 1 KiB; 4 items a thread" with work per line (KT_X_WORKS=4: 1 a zmm load + add; 2
# kernel-like zmm arithmetic: 2 vpermt2d + 2 vpand + 2 vpdpbusd + cvt + fma; 3 the same in ymm; 4 twice 2),
# taking turns call by call with the operator and the read forms, V3 / V2-Lite MoE at one token, V3-shape GEMVs.
set -uo pipefail
C=$OUT/b; mkdir -p $C; trap 'cd $OUT && tar czf b.tgz b && rm -rf b' EXIT
N=/tmp/kt-b; mkdir -p $N; tar xJf .device-carry/s36/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $C/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s36/COMMIT)"
export KT_X_WORKS=4
moe() { # tag shape seconds
  local s0=$SECONDS
  timeout 200 $N/kt-bench moe --shape $2 --format q4_k --tokens 1 --threads 16 --seconds $3 --ceiling --json \
    > $C/moe_$1.jsonl 2> $C/moe_$1.err
  log "moe $1 rc $? wall $((SECONDS-s0))s"
  grep '^XW' $C/moe_$1.err | tee -a $C/summary.txt
  python3 - $C/moe_$1.jsonl <<'PY' | tee -a $C/summary.txt
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print("  %-50s %.4f ms  %6.1f GB/s  start %3.0f%% (probe %.1f)  beside %s  of ceiling %s" % (
        r.get("read_ceiling") or "operator", r["ms_per_call"], r["weight_gbps"], 100 * r["bandwidth_fraction"],
        r["dram_gbps"],
        "%.0f%%" % (100 * r["bandwidth_fraction_paired"]) if r.get("bandwidth_fraction_paired") else "-",
        "%.0f%%" % (100 * r["of_read_ceiling"]) if r.get("of_read_ceiling") else "-"))
PY
}
mm() { # tag seconds
  local s0=$SECONDS
  timeout 240 $N/kt-bench matmul --formats q4_k,q6_k,q8_0 --shapes 2048x7168,7168x2048 --tokens 1 \
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
moe v3a deepseek-v3 10
mm 1 3
moe v2l deepseek-v2-lite 8
moe v3b deepseek-v3 10
[ $((SECONDS-t0)) -lt 400 ] && mm 2 3
log done
