#!/usr/bin/env bash
# Session 18 call B (x18b: x18a + records-pass prefetch knobs: v/10000 = 1: next token's x run into L1, 2: all 16
# tokens' runs into L2 first; v%10000 = AMX items per thread): where the records pass's time goes (cycled vs resident).
set -uo pipefail
E=$OUT/b; mkdir -p $E; trap 'cd $OUT && tar czf b.tgz b && rm -rf b' EXIT
B=/tmp/kt; mkdir -p $B && tar xJf .device-carry/x18b/bin.tar.xz -C $B
echo "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/x18b/COMMIT)" | tee $E/summary.txt
for f in q8_0 q4_k; do
  KT_X_AB=0,10000,20000,8,10008,20008 timeout 200 $B/kt-bench matmul --formats $f --tokens 512 --threads 16 --seconds 0.6 > $E/mm_$f.txt 2>&1
  echo "rc $?" >> $E/mm_$f.txt; cat $E/mm_$f.txt | tee -a $E/summary.txt
done
KT_X_AB=0,10000,20000 timeout 100 $B/kt-bench matmul --formats q8_0 --shapes 2048x7168,7168x2048,1408x2048 --tokens 512 --threads 16 --seconds 0.6 --resident > $E/mm_res.txt 2>&1
echo "rc $?" >> $E/mm_res.txt; cat $E/mm_res.txt | tee -a $E/summary.txt
