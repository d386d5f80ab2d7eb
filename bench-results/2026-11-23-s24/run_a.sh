#!/usr/bin/env bash
# Session 24 call A: where the one-token GEMV's gap to the probe lies. Knob x24 (KT_X_AB) in the AVX512 pair GEMV:
# 0 = main (next register tile's super-block into L1), 1 = loads only (the same lines read, no arithmetic, same
# prefetch), 2 = loads only, no prefetch, 3 = prefetch 1 KiB ahead in the stream, 4 = 2 KiB ahead. Main at ac2d7ff.
set -uo pipefail
E=$OUT/a; mkdir -p $E; trap "cd $OUT && tar czf a.tgz a && rm -rf a" EXIT
X=/tmp/ktx; mkdir -p $X && tar xJf .device-carry/s24xa/bin.tar.xz -C $X
xz -dc .device-carry/s24xa/membw_patterns.xz > $X/membw_patterns && chmod +x $X/membw_patterns
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s24xa/COMMIT); $(nproc) cpus"
$X/kt-bench machine --threads 16 --json > $E/machine.json 2>&1; log "machine $(cat $E/machine.json)"
timeout 60 $X/membw_patterns 16 "4:0,4:1024,4:4096,8:1024,8:4096,4:1024l2,16:1024" 4294967296 > $E/patterns.txt 2>&1
log "patterns rc $? $(tr '\n' ' ' < $E/patterns.txt)"
V=0,1,2,3,4
for r in 1 2 3; do
  for s in deepseek-v3 deepseek-v2-lite; do
    KT_X_AB=$V timeout 90 $X/kt-bench moe --shape $s --format q4_k --tokens 1 --threads 16 --seconds 3 > $E/moe_${s}_$r.txt 2>&1
    log "moe $s $r rc $? $(grep x_variant $E/moe_${s}_$r.txt | sort | tr '\n' ' ')"
  done
done
for t in 16 8; do
  KT_X_AB=$V timeout 200 $X/kt-bench matmul --formats q4_k,q6_k,q8_0 \
    --shapes 2048x7168,7168x2048,18432x7168 --tokens 1 --threads $t --seconds 0.4 > $E/mm_t$t.txt 2>&1
  log "mm t$t rc $?"; cat $E/mm_t$t.txt
done
log done
