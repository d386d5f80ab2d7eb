#!/usr/bin/env bash
# Session 36 call G: (1) does a kernel call that follows a read form read slower? The shipped kernel once more as
# the last setting of `--ceiling` (after the read forms; kt-bench-x = x36_identity_last.patch, KT_X_MODES=1: the
# same code, "mode 1") against setting 0 (after that last kernel call), V3 MoE and GEMVs; (2) the targets measured
# the way `kt-bench moe` / `matmul` run without --ceiling (kernel calls back to back, probes between rounds), main.
set -uo pipefail
C=$OUT/g; mkdir -p $C; trap 'cd $OUT && tar czf g.tgz g && rm -rf g' EXIT
N=/tmp/kt-g; mkdir -p $N; tar xJf .device-carry/s36/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $C/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s36/COMMIT)"
summ_moe() {
  python3 - $1 <<'PY' | tee -a $C/summary.txt
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    if r.get("read_ceiling") and not r["read_ceiling"].startswith("8 streams, prefetch 1 KiB; 4"): continue
    print("  %-50s %.4f ms  %6.1f GB/s  start %3.0f%% (probe %.1f)  beside %s" % (
        r.get("read_ceiling") or "operator", r["ms_per_call"], r["weight_gbps"], 100 * r["bandwidth_fraction"],
        r["dram_gbps"], "%.1f%%" % (100 * r["bandwidth_fraction_paired"]) if r.get("bandwidth_fraction_paired") else "-"))
PY
}
moe() { # tag binary shape seconds extra...
  local s0=$SECONDS
  env KT_X_MODES=1 timeout 200 $N/$2 moe --shape $3 --format q4_k --tokens 1 --threads 16 --seconds $4 --json "${@:5}" \
    > $C/moe_$1.jsonl 2> $C/moe_$1.err
  log "moe $1 rc $? wall $((SECONDS-s0))s"
  grep '^XW' $C/moe_$1.err | tee -a $C/summary.txt
  summ_moe $C/moe_$1.jsonl
}
mm() { # tag binary seconds extra...
  local s0=$SECONDS
  env KT_X_MODES=1 timeout 280 $N/$2 matmul --tokens 1 --threads 16 --seconds $3 --json "${@:4}" > $C/mm_$1.jsonl 2> $C/mm_$1.err
  log "matmul $1 rc $? wall $((SECONDS-s0))s"
  grep '^XW' $C/mm_$1.err | tee -a $C/summary.txt
  python3 - $C/mm_$1.jsonl <<'PY' | tee -a $C/summary.txt
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    if "skipped" in r: continue
    p = lambda f: "%.1f%%" % (100 * f) if f else "-"
    print("  %-5s %5dx%-5d %.4f ms %6.1f GB/s start %3.0f%% beside %6s" % (r["format"], r["rows"], r["cols"],
        r["ms_per_call"], r["weight_gbps"], 100 * r["bandwidth_fraction"], p(r.get("bandwidth_fraction_paired"))))
PY
}
moe x_v3a kt-bench-x deepseek-v3 8 --ceiling
mm x kt-bench-x 2 --ceiling --formats q4_k,q6_k,q8_0
moe main_v3a kt-bench-main deepseek-v3 8
moe main_v2l kt-bench-main deepseek-v2-lite 6
mm main kt-bench-main 2
moe main_v3b kt-bench-main deepseek-v3 8
moe x_v3b kt-bench-x deepseek-v3 8 --ceiling
log done
