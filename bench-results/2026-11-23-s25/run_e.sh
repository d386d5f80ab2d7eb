#!/usr/bin/env bash
# Session 25 call E (branch x25e, CPU build): the repacked VNNI decode kernel in one process (KT_X_AB): 0 = new (one
# token: four panel runs side by side, two tokens: two; each stream prefetched 4 KiB ahead into L2), 1 = one stream
# with that prefetch, 2 = one stream, no prefetch (main); two processes each.
set -uo pipefail
E=$OUT/e; mkdir -p $E; trap 'cd $OUT && tar czf e.tgz e && rm -rf e' EXIT
C=.device-carry/s25xe; B=/tmp/kt-bin; mkdir -p $B
xz -dc $C/kt-bench.xz > $B/kt-bench && chmod +x $B/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat $C/COMMIT)"
$B/kt-bench machine --threads 16 --json > $E/machine.json 2>&1; log "machine $(head -c 200 $E/machine.json)"
one() { # format shape tokens run
  local f=$1 s=$2 t=$3 r=$4
  KT_X_AB=0,1,2 timeout 90 $B/kt-bench moe --shape $s --format $f --group 128 --tokens $t --threads 16 --seconds 2 > $E/${f}_${s}_T${t}_$r.txt 2>&1
  log "$f $s T$t $r rc $? $(grep x_variant $E/${f}_${s}_T${t}_$r.txt | awk '{print $4}' | tr '\n' ' ') $(grep -c 'bit_identical true nans 0' $E/${f}_${s}_T${t}_$r.txt) ok"
}
for r in 1 2; do
  one int4 deepseek-v3 1 $r; one int4 deepseek-v2-lite 1 $r; one int4 deepseek-v2-lite 2 $r; one int4 deepseek-v2-lite 4 $r
  one int8 deepseek-v2-lite 1 $r; one bf16 deepseek-v2-lite 1 $r
done
log done
