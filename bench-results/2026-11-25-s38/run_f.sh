#!/usr/bin/env bash
# Session 38 call F: call D's Q6_K / Q8_0 512-token GEMMs read 8-17% slower on main than on session 19's
# code (0e499ec), 3 rounds. Eight rounds of the two in turn (separate processes, the order flipped every
# round), Q6_K and Q8_0 on the V3 expert shapes plus Q4_K as a control, 1 s of calls a case.
set -uo pipefail
E=$OUT/f; mkdir -p $E; trap 'cd $OUT && tar czf f.tgz f && rm -rf f' EXIT
C=.device-carry/s38; N=/tmp/kt-f; mkdir -p $N; tar xJf $C/bin.tar.xz -C $N ./kt-bench; xz -dc $C/kt-bench-s19.xz > $N/kt-bench-s19; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $C/COMMIT)"
one() { timeout 60 $N/$1 matmul --tokens 512 --threads 16 --seconds 1 --json --formats q6_k,q8_0,q4_k \
    --shapes 2048x7168,7168x2048 2>> $E/errors.txt | sed "s/^{/{\"bin\":\"$1\",\"round\":$2,/" >> $E/gemm.jsonl
  log "$1 round $2 rc ${PIPESTATUS[0]} $(tail -6 $E/gemm.jsonl | grep -o '"ms_per_call":[0-9.]\{5\}' | cut -d: -f2 | tr '\n' ' ')"; }
for r in 1 2 3 4 5 6 7 8; do [ $((SECONDS-t0)) -gt 480 ] && break
  if [ $((r % 2)) = 1 ]; then one kt-bench-s19 $r; one kt-bench $r; else one kt-bench $r; one kt-bench-s19 $r; fi
done
log done
