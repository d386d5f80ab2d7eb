#!/bin/bash
# MoE operator CPU time per call, interleaved A/B: 2 rounds x ISA x format x tokens x {base,new}
cd /tmp/q56bench
for round in 1 2; do
  for isa in avx2 avx512 amx; do
    for fmt in q4_k q5_k; do
      for tok in 1 512; do
        for bin in base new; do
          echo "round=$round isa=$isa fmt=$fmt tokens=$tok bin=$bin $(KT_ISA=$isa timeout 120 /tmp/q56-kt-bench-$bin moe --format $fmt --tokens $tok --threads 2 --seconds 1 --cpu-time --json 2>&1 | tail -1)" >> moe.txt
        done
      done
    done
  done
done
echo done > finished3
