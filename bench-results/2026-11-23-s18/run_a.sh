#!/usr/bin/env bash
# Session 18 call A (x18a = experiment build: AMX GEMM item knobs + phase timers, KT_X_AB in kt-bench matmul):
# why the few-row / long-K Q8_0 and Q4_K GEMMs at 512 tokens trail 7168x2048; machine facts.
set -uo pipefail
E=$OUT/a; mkdir -p $E; trap 'cd $OUT && tar czf a.tgz a && rm -rf a' EXIT
B=/tmp/kt; mkdir -p $B && tar xJf .device-carry/x18a/bin.tar.xz -C $B
echo "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/x18a/COMMIT)" | tee $E/summary.txt
lscpu > $E/lscpu.txt 2>&1; grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E "amx|avx512|ht$" | tr '\n' ' ' | tee -a $E/summary.txt; echo | tee -a $E/summary.txt
cat /sys/devices/system/cpu/cpu0/topology/thread_siblings_list /sys/devices/system/cpu/cpu0/topology/core_id 2>&1 | tee -a $E/summary.txt
grep -E "Thread|Core|Socket|L2|L3|MHz" $E/lscpu.txt | tee -a $E/summary.txt
for f in q8_0 q4_k; do
  KT_X_AB=0,8,16,400,1600 timeout 200 $B/kt-bench matmul --formats $f --tokens 512 --threads 16 --seconds 0.6 > $E/mm_$f.txt 2>&1
  echo "rc $?" >> $E/mm_$f.txt; cat $E/mm_$f.txt | tee -a $E/summary.txt
done
KT_X_AB=0,8 timeout 100 $B/kt-bench matmul --formats q8_0 --shapes 2048x7168,7168x2048 --tokens 512 --threads 8 --seconds 0.6 > $E/mm_q8_0_t8.txt 2>&1
echo "rc $?" >> $E/mm_q8_0_t8.txt; cat $E/mm_q8_0_t8.txt | tee -a $E/summary.txt
