#!/usr/bin/env bash
# Session 35 call E: the read ceiling with each pattern at one and at four items a thread (a mid-size call's
# bytes balanced over the threads by the counter), beside the one-token GEMVs (two processes) and the one-token
# MoE layers; the new probe (buffers in turn, median pass).
set -uo pipefail
C=$OUT/e; mkdir -p $C; trap 'cd $OUT && tar czf e.tgz e && rm -rf e' EXIT
N=/tmp/kt-e; mkdir -p $N; tar xJf .device-carry/s35/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $C/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s35/COMMIT)"
moe() { # tag shape seconds
  local s0=$SECONDS
  timeout 200 $N/kt-bench moe --shape $2 --format q4_k --tokens 1 --threads 16 --seconds $3 --ceiling --json \
    > $C/moe_$1.jsonl 2> $C/moe_$1.err
  log "moe $1 rc $? wall $((SECONDS-s0))s"
  python3 - $C/moe_$1.jsonl <<'PY' | tee -a $C/summary.txt
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print("  %-50s %.4f ms  %6.1f GB/s  start %3.0f%% (probe %.1f, fastest pass %.1f)  beside %s  of ceiling %s" % (
        r.get("read_ceiling") or "operator", r["ms_per_call"], r["weight_gbps"], 100 * r["bandwidth_fraction"],
        r["dram_gbps"], r["dram_gbps_best_pass"],
        "%.0f%%" % (100 * r["bandwidth_fraction_paired"]) if r.get("bandwidth_fraction_paired") else "-",
        "%.0f%%" % (100 * r["of_read_ceiling"]) if r.get("of_read_ceiling") else "-"))
PY
}
mm() { # tag seconds
  local s0=$SECONDS
  timeout 240 $N/kt-bench matmul --tokens 1 --threads 16 --seconds $2 --ceiling --json > $C/mm_$1.jsonl 2> $C/mm_$1.err
  log "matmul $1 rc $? wall $((SECONDS-s0))s"
  python3 - $C/mm_$1.jsonl <<'PY' | tee -a $C/summary.txt
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    if "skipped" in r: continue
    c = max(r["read_ceiling"], key=lambda f: f["weight_gbps"])
    p = lambda f: "%.0f%%" % (100 * f) if f else "-"
    print("  %-5s %5dx%-5d %.4f ms %6.1f GB/s start %3.0f%% beside %4s | ceiling %-34s x%d %6.1f GB/s beside %4s | of ceiling %3.0f%%" % (
        r["format"], r["rows"], r["cols"], r["ms_per_call"], r["weight_gbps"], 100 * r["bandwidth_fraction"], p(r.get("bandwidth_fraction_paired")),
        c["pattern"], c["items_per_thread"], c["weight_gbps"], p(c.get("bandwidth_fraction_paired")), 100 * r["of_read_ceiling"]))
PY
}
moe v3 deepseek-v3 10
moe v2l deepseek-v2-lite 8
mm 1 2.5
[ $((SECONDS-t0)) -lt 420 ] && mm 2 2.5
log done
