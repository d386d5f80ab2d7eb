#!/usr/bin/env bash
# Session 38 call D: call C's 512-token GEMMs read 15-48% slower than session 19's calls K / K2 (ggml 0-18%
# slower). Old (0e499ec, session 19's final code) against new (COMMIT) in turn, separate processes, three
# rounds, every format on the V3 expert shapes, 0.5 s of calls a case.
set -uo pipefail
E=$OUT/d; mkdir -p $E; trap 'cd $OUT && tar czf d.tgz d && rm -rf d' EXIT
C=.device-carry/s38; N=/tmp/kt-d; mkdir -p $N; tar xJf $C/bin.tar.xz -C $N ./kt-bench; xz -dc $C/kt-bench-s19.xz > $N/kt-bench-s19; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $C/COMMIT)"
for r in 1 2 3; do for b in kt-bench-s19 kt-bench; do [ $((SECONDS-t0)) -gt 520 ] && continue
  timeout 60 $N/$b matmul --tokens 512 --threads 16 --seconds 0.5 --json --formats q4_k,q5_k,q2_k,q6_k,q8_0,bf16 \
    --shapes 2048x7168,7168x2048 2>> $E/errors.txt | sed "s/^{/{\"bin\":\"$b\",\"round\":$r,/" >> $E/gemm.jsonl
  log "$b round $r rc ${PIPESTATUS[0]} $(tail -12 $E/gemm.jsonl | grep -o '"ms_per_call":[0-9.]\{5\}' | cut -d: -f2 | tr '\n' ' ')"
done; done
log done
