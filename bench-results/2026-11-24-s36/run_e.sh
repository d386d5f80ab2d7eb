#!/usr/bin/env bash
# Session 36 call E (experiment build, x36_gemv_quantize_first_ab.patch on top of the change): the one-token GEMVs of
# more items than threads with the activations quantized inside the job (item 0 on the caller while the others'
# first items prefetch and wait: new) against quantized before the job is posted (old), taking turns call by call in
# one process beside the read forms; two processes.
set -uo pipefail
C=$OUT/e; mkdir -p $C; trap 'cd $OUT && tar czf e.tgz e && rm -rf e' EXIT
N=/tmp/kt-e; mkdir -p $N; tar xJf .device-carry/s36/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $C/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s36/COMMIT)"
mm() { # tag seconds
  local s0=$SECONDS
  timeout 280 $N/kt-bench matmul --tokens 1 --threads 16 --seconds $2 --ceiling --json > $C/mm_$1.jsonl 2> $C/mm_$1.err
  log "matmul $1 rc $? wall $((SECONDS-s0))s"
  grep '^XO' $C/mm_$1.err | tee -a $C/summary.txt
}
mm 1 2
mm 2 2
log done
