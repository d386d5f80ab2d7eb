#!/bin/bash
# interleaved A/B: 5 rounds x {avx2, avx512, default(amx)} x {base, new}
for round in 1 2 3 4 5; do
  for isa in avx2 avx512 amx; do
    for bin in base new; do
      KT_ISA=$isa timeout 120 /tmp/q56-kt-bench-$bin matmul --tokens 1,512 --formats q5_k,q6_k,q4_k --shapes 2048x7168,7168x2048 --threads 2 --seconds 0.3 --json > $isa-$bin-$round.json 2>&1
    done
  done
done
echo done > finished
