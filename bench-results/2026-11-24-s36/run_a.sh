#!/usr/bin/env bash
# Session 36 call A (experiment build, x36_prefetch_knobs.patch): the one-token kernels' weight prefetch as
# variants taking turns call by call with the shipped one in one process (KT_X_VARIANTS = lead:hint:exact;
# hint 0 prefetcht0, 2 prefetchnta; exact = one prefetch per line, as the read probe, instead of every line
# of each 144-byte window), on the V3 / V2-Lite MoE layers at one token and the V3-shape GEMVs.
set -uo pipefail
C=$OUT/a; mkdir -p $C; trap 'cd $OUT && tar czf a.tgz a && rm -rf a' EXIT
N=/tmp/kt-a; mkdir -p $N; tar xJf .device-carry/s36/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $C/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s36/COMMIT)"
export KT_X_VARIANTS="1536:2:0,1536:0:1,1024:0:1,1536:2:1,2048:0:1"
log "variants 1..5: $KT_X_VARIANTS (0 = shipped 1536:0:0)"
moe() { # tag shape seconds
  local s0=$SECONDS
  timeout 200 $N/kt-bench moe --shape $2 --format q4_k --tokens 1 --threads 16 --seconds $3 --ceiling --json \
    > $C/moe_$1.jsonl 2> $C/moe_$1.err
  log "moe $1 rc $? wall $((SECONDS-s0))s"
  grep '^XV' $C/moe_$1.err | tee -a $C/summary.txt
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
  timeout 240 $N/kt-bench matmul --formats q4_k,q6_k,q5_k,q2_k,q8_0 --shapes 2048x7168,7168x2048 --tokens 1 \
    --threads 16 --seconds $2 --ceiling --json > $C/mm_$1.jsonl 2> $C/mm_$1.err
  log "matmul $1 rc $? wall $((SECONDS-s0))s"
  grep '^XV' $C/mm_$1.err | tee -a $C/summary.txt
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
