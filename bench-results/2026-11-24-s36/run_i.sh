#!/usr/bin/env bash
# Session 36 call I (experiment build, x36_touch_after_read.patch): why a GEMV right after a read job reads slower.
# Settings in one process: 0 the GEMV (after a GEMV: the lead-in), the read forms, then the GEMV right after the last
# read form, then the GEMV after an untimed read of another copy plus an untimed GEMV over a small resident matrix
# (64 rows) of the same format: the kernel's code, the pool's threads and the predictors warm, no stream through L2.
set -uo pipefail
C=$OUT/i; mkdir -p $C; trap 'cd $OUT && tar czf i.tgz i && rm -rf i' EXIT
N=/tmp/kt-i; mkdir -p $N; tar xJf .device-carry/s36/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $C/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s36/COMMIT)"
mm() { # tag seconds
  local s0=$SECONDS
  timeout 280 $N/kt-bench matmul --formats q4_k,q6_k,q8_0 --tokens 1 --threads 16 --seconds $2 --ceiling --json \
    > $C/mm_$1.jsonl 2> $C/mm_$1.err
  log "matmul $1 rc $? wall $((SECONDS-s0))s"
  grep '^XT' $C/mm_$1.err | tee -a $C/summary.txt
}
mm 1 2
mm 2 2
log done
