#!/usr/bin/env bash
# Session 8 shared call: the two CPU helpers' scripts in turn (each writes its own tgz under $OUT).

timeout 245 bash .device-carry/int4f8/run.sh > $OUT/int4f8_stdout.txt 2>&1
timeout 245 bash .device-carry/gemm8/run.sh > $OUT/gemm8_stdout.txt 2>&1
