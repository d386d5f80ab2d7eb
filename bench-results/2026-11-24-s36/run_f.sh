#!/usr/bin/env bash
# Session 36 call F (experiment build, x36_gemv_quantize_first_ab.patch with KT_X_SWAP): the one-token GEMVs of
# more items than threads with the activations quantized inside the job (item 0 on the caller while the others'
# first items prefetch and wait: new) against quantized before the job is posted (old), taking turns call by call in
# one process beside the read forms. Call E showed a setting that follows a read form reading 2-3% slower (the same
# code at both positions on the one-item shapes), so here one process with the old path at setting 0 and the new one
# last (KT_X_SWAP=1), then one as in call E.
set -uo pipefail
C=$OUT/f; mkdir -p $C; trap 'cd $OUT && tar czf f.tgz f && rm -rf f' EXIT
N=/tmp/kt-f; mkdir -p $N; tar xJf .device-carry/s36/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $C/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s36/COMMIT)"
mm() { # tag seconds [env...]
  local s0=$SECONDS
  env "${@:3}" timeout 280 $N/kt-bench matmul --tokens 1 --threads 16 --seconds $2 --ceiling --json > $C/mm_$1.jsonl 2> $C/mm_$1.err
  log "matmul $1 rc $? wall $((SECONDS-s0))s"
  grep '^XO' $C/mm_$1.err | tee -a $C/summary.txt
}
mm swap 2 KT_X_SWAP=1
mm plain 2
log done
