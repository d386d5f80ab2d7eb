#!/usr/bin/env bash
# Session 35 call F (experiment build, x35_gemv_items_knob.patch, not on main): the one-token GEMV's items a thread
# (KT_X_GEMV_IPT = 1, 2, 4, 8; unset = the driver's choice: 1 for 1408x2048, 4 for the others), Q4_K and Q6_K, each
# setting its own process, two rounds in opposite orders, with the read ceiling beside (of ceiling: the GEMV against
# the best plain read of the same bytes in the same process).
set -uo pipefail
C=$OUT/f; mkdir -p $C; trap 'cd $OUT && tar czf f.tgz f && rm -rf f' EXIT
N=/tmp/kt-f; mkdir -p $N; tar xJf .device-carry/s35/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $C/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
mm() { # setting round
  local s0=$SECONDS tag=ipt$1_$2
  if [ $1 = d ]; then unset KT_X_GEMV_IPT; else export KT_X_GEMV_IPT=$1; fi
  timeout 120 $N/kt-bench-x matmul --tokens 1 --threads 16 --seconds 2 --formats q4_k,q6_k \
    --shapes 2048x7168,7168x2048,1408x2048,18432x7168 --ceiling --json > $C/mm_$tag.jsonl 2> $C/mm_$tag.err
  log "matmul $tag rc $? wall $((SECONDS-s0))s"
  python3 - $C/mm_$tag.jsonl <<'PY' | tee -a $C/summary.txt
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    c = max(r["read_ceiling"], key=lambda f: f["weight_gbps"])
    p = lambda f: "%.0f%%" % (100 * f) if f else "-"
    print("  %-5s %5dx%-5d %.4f ms %6.1f GB/s beside %4s | ceiling x%d %6.1f GB/s beside %4s | of ceiling %3.0f%%" % (
        r["format"], r["rows"], r["cols"], r["ms_per_call"], r["weight_gbps"], p(r.get("bandwidth_fraction_paired")),
        c["items_per_thread"], c["weight_gbps"], p(c.get("bandwidth_fraction_paired")), 100 * r["of_read_ceiling"]))
PY
}
for s in d 1 2 4 8; do mm $s 1; done
for s in 8 4 2 1 d; do [ $((SECONDS-t0)) -lt 480 ] && mm $s 2; done
log done
