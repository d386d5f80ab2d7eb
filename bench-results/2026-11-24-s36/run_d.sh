#!/usr/bin/env bash
# Session 36 call D (experiment build, x36_q4k_modes.patch): what a Q4_K one-token kernel with less vector work
# would gain: KT_X_MODES=3 (mode 1 the row-pair GEMV without its 8 permutes a super-block pair, 2 without the scale
# decode (constant scales), 3 neither; wrong results on purpose, the same loads and prefetches) taking turns with
# the kernel, the read forms and the plain read with work 1 / 2 (KT_X_WORKS=2) in one process.
set -uo pipefail
C=$OUT/d; mkdir -p $C; trap 'cd $OUT && tar czf d.tgz d && rm -rf d' EXIT
N=/tmp/kt-d; mkdir -p $N; tar xJf .device-carry/s36/bin.tar.xz -C $N; chmod +x $N/*
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
  env "${@:3}" timeout 240 $N/kt-bench matmul --formats q4_k --shapes 2048x7168,7168x2048 --tokens 1 \
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
export KT_X_WORKS=2 KT_X_MODES=3
moe v3a deepseek-v3 10
mm 1 3
moe v2l deepseek-v2-lite 8
moe v3b deepseek-v3 10
mm 2 3
log done
