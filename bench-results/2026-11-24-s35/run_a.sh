#!/usr/bin/env bash
# Session 35 call A: the read ceiling. `kt-bench moe --ceiling` and `kt-bench matmul --ceiling` time each
# one-token call's bytes read again in one pool job with each of the read probe's five patterns (no kernel),
# taking turns with the kernel call by call in one process, with the probe read every 0.5 s between.
set -uo pipefail
A=$OUT/a; mkdir -p $A
N=/tmp/kt-a; mkdir -p $N; tar xJf .device-carry/s35/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $A/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); nproc $(nproc); $(cat .device-carry/s35/COMMIT)"
moe() { # tag shape seconds
  local s0=$SECONDS
  timeout 240 $N/kt-bench moe --shape $2 --format q4_k --tokens 1 --threads 16 --seconds $3 --ceiling --json \
    > $A/moe_$1.jsonl 2> $A/moe_$1.err
  log "moe $1 rc $? wall $((SECONDS-s0))s"
  python3 - $A/moe_$1.jsonl <<'PY' | tee -a $A/summary.txt
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print("  %-36s %.4f ms  %6.1f GB/s  start %3.0f%%  beside %s  of ceiling %s  probes %s" % (
        r.get("read_ceiling") or "operator", r["ms_per_call"], r["weight_gbps"], 100 * r["bandwidth_fraction"],
        "%.0f%%" % (100 * r["bandwidth_fraction_paired"]) if r.get("bandwidth_fraction_paired") else "-",
        "%.0f%%" % (100 * r["of_read_ceiling"]) if r.get("of_read_ceiling") else "-",
        "%.0f-%.0f (%d)" % (min(r["dram_gbps_around"]), max(r["dram_gbps_around"]), len(r["dram_gbps_around"]))))
PY
}
mm() { # tag seconds formats
  local s0=$SECONDS
  timeout 200 $N/kt-bench matmul --tokens 1 --threads 16 --seconds $2 --formats $3 --ceiling --json > $A/mm_$1.jsonl 2> $A/mm_$1.err
  log "matmul $1 rc $? wall $((SECONDS-s0))s"
  python3 - $A/mm_$1.jsonl <<'PY' | tee -a $A/summary.txt
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    if "skipped" in r: continue
    c = max(r["read_ceiling"], key=lambda f: f["weight_gbps"])
    p = lambda f: "%.0f%%" % (100 * f) if f else "-"
    print("  %-5s %5dx%-5d %.4f ms %6.1f GB/s beside %4s | ceiling %-34s %6.1f GB/s beside %4s | of ceiling %3.0f%%" % (
        r["format"], r["rows"], r["cols"], r["ms_per_call"], r["weight_gbps"], p(r.get("bandwidth_fraction_paired")),
        c["pattern"], c["weight_gbps"], p(c.get("bandwidth_fraction_paired")), 100 * r["of_read_ceiling"]))
PY
}
moe v3_1 deepseek-v3 8
moe v2l_1 deepseek-v2-lite 6
mm 1 2 q4_k,q5_k,q2_k,q6_k,q8_0,bf16
moe v3_2 deepseek-v3 8
moe v2l_2 deepseek-v2-lite 6
mm 2 2 q4_k,q6_k
log done
