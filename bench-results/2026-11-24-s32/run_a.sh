#!/bin/bash
# session 32 call A: split (line-crossing) loads against aligned ones, all threads, from DRAM
set -u
B=.device-carry/s32a
lscpu | grep -i "model name" > $OUT/cpu.txt
for t in 16 8 16; do
  $B/membw_split $t 1 5 > $OUT/split_t$t.$RANDOM.txt 2>&1
done
grep -H best $OUT/split_*.txt
