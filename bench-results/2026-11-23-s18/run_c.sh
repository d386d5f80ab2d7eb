#!/usr/bin/env bash
# Session 18 call C: the records pass of the AMX GEMM driver replicated in an example (x_rec_par, x18 branch):
# quantize rows / transpose items / the fused item (as the driver does), 1 and 16 (and 8) threads, 512 x 7168.
set -uo pipefail
E=$OUT/c; mkdir -p $E; trap 'cd $OUT && tar czf c.tgz c && rm -rf c' EXIT
for t in 16 8 4; do timeout 60 .device-carry/x18c/x_rec_par $t 2>&1 | tee -a $E/summary.txt; done
