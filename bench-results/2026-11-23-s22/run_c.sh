#!/usr/bin/env bash
# Session 22 call C: the AVX2 one-token streams (3985c66, "new") against main before them (dfe1be2, "old") with
# KT_ISA=avx2 on the device's 16 cores, separate processes taking turns; the default (AVX512) MoE of "new" beside.
set -uo pipefail
E=$OUT/c; mkdir -p $E; trap 'cd $OUT && tar czf c.tgz c && rm -rf c' EXIT
X=/tmp/ktx; mkdir -p $X && tar xJf .device-carry/s22av/bins.tar.xz -C $X
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nproc) cpus"
for r in 1 2; do
  for b in old new; do
    KT_ISA=avx2 timeout 90 $X/kt-$b matmul --formats q4_k,q5_0,q6_k,q8_0 --shapes 1408x2048,2048x1408,7168x2048,2048x7168 \
      --tokens 1 --threads 16 --seconds 0.3 > $E/mm_${b}_$r.txt 2>&1; log "mm $b $r rc $?"
  done
done
moe() { # name, binary, args
  local n=$1 b=$2; shift 2
  timeout 60 $X/kt-$b moe "$@" --threads 16 --tokens 1 --seconds 2 --json > $E/$n.json 2> $E/$n.err
  log "$n rc $? $(grep -o '"ms_per_call":[0-9.]*\|"bandwidth_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"isa":"[a-z0-9]*"' $E/$n.json | tr '\n' ' ')"
}
for r in 1 2; do
  for b in old new; do
    KT_ISA=avx2 moe v2l_avx2_${b}_$r $b --shape deepseek-v2-lite --format q4_k
    KT_ISA=avx2 moe v3_avx2_${b}_$r $b --shape deepseek-v3 --format q4_k
  done
done
moe v2l_default_new new --shape deepseek-v2-lite --format q4_k
moe v3_default_new new --shape deepseek-v3 --format q4_k
grep -h "" $E/mm_*.txt | grep -E "^q|bench" > $E/mm_all.txt
log done
