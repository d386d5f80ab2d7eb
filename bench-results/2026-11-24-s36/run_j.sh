#!/usr/bin/env bash
# Session 36 call J: the final code (e7dcca4: the MoE lead-in call draws its own routing; in call H, with the V3
# layer in one copy, it read the timed call's experts): the V3 and V2-Lite layers with and without --ceiling, in turn.
set -uo pipefail
C=$OUT/j; mkdir -p $C; trap 'cd $OUT && tar czf j.tgz j && rm -rf j' EXIT
N=/tmp/kt-j; mkdir -p $N; tar xJf .device-carry/s36/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $C/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s36/COMMIT)"
moe() { # tag shape seconds extra...
  local s0=$SECONDS
  timeout 200 $N/kt-bench moe --shape $2 --format q4_k --tokens 1 --threads 16 --seconds $3 --json "${@:4}" \
    > $C/moe_$1.jsonl 2> $C/moe_$1.err
  log "moe $1 rc $? wall $((SECONDS-s0))s"
  python3 - $C/moe_$1.jsonl <<'PY' | tee -a $C/summary.txt
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print("  %-50s %.4f ms  %6.1f GB/s  start %3.0f%% (probe %.1f)  beside %s  of ceiling %s" % (
        r.get("read_ceiling") or "operator", r["ms_per_call"], r["weight_gbps"], 100 * r["bandwidth_fraction"],
        r["dram_gbps"], "%.1f%%" % (100 * r["bandwidth_fraction_paired"]) if r.get("bandwidth_fraction_paired") else "-",
        "%.1f%%" % (100 * r["of_read_ceiling"]) if r.get("of_read_ceiling") else "-"))
PY
}
mm() { # tag seconds
  local s0=$SECONDS
  timeout 280 $N/kt-bench matmul --tokens 1 --threads 16 --seconds $2 --ceiling --json > $C/mm_$1.jsonl 2> $C/mm_$1.err
  log "matmul $1 rc $? wall $((SECONDS-s0))s"
  python3 - $C/mm_$1.jsonl <<'PY' | tee -a $C/summary.txt
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    if "skipped" in r: continue
    c = max(r["read_ceiling"], key=lambda f: f["weight_gbps"])
    p = lambda f: "%.1f%%" % (100 * f) if f else "-"
    print("  %-5s %5dx%-5d %.4f ms %6.1f GB/s beside %6s | ceiling %-30s x%d beside %6s | of ceiling %5.1f%%" % (
        r["format"], r["rows"], r["cols"], r["ms_per_call"], r["weight_gbps"], p(r.get("bandwidth_fraction_paired")),
        c["pattern"], c["items_per_thread"], p(c.get("bandwidth_fraction_paired")), 100 * r["of_read_ceiling"]))
PY
}
moe v3c deepseek-v3 10 --ceiling
moe v3 deepseek-v3 8
moe v3c2 deepseek-v3 10 --ceiling
moe v3b deepseek-v3 8
moe v2lc deepseek-v2-lite 8 --ceiling
moe v2l deepseek-v2-lite 6
log done
