#!/usr/bin/env bash
# Session 18 call D (x18d = main 531e7ab (items slack) + experiment: v/100000 = 0 records pass then items (two pool
# jobs, as main), 1 one job (records items first, GEMM items token-block-major waiting for their block's records),
# 2 two jobs with token-block-major items), in one process, variants taking turns call by call; maxdiff against v0.
set -uo pipefail
E=$OUT/d; mkdir -p $E; trap 'cd $OUT && tar czf d.tgz d && rm -rf d' EXIT
B=/tmp/kt; mkdir -p $B && tar xJf .device-carry/x18d/bin.tar.xz -C $B
echo "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/x18d/COMMIT)" | tee $E/summary.txt
for f in q8_0 q4_k; do
  KT_X_AB=0,100000,200000 timeout 200 $B/kt-bench matmul --formats $f --tokens 512,128 --threads 16 --seconds 0.8 > $E/mm_$f.txt 2>&1
  echo "rc $?" >> $E/mm_$f.txt; cat $E/mm_$f.txt | tee -a $E/summary.txt
done
KT_X_AB=0,100000,200000 timeout 100 $B/kt-bench matmul --formats q6_k,q5_0 --shapes 2048x7168,1408x2048 --tokens 512 --threads 16 --seconds 0.8 > $E/mm_more.txt 2>&1
echo "rc $?" >> $E/mm_more.txt; cat $E/mm_more.txt | tee -a $E/summary.txt
