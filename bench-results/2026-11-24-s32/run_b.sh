#!/usr/bin/env bash
# Session 32 call B: issue 4's MoE rows beside kt-kernel 0.7.2 in one call (the table the issue
# asks for, with the current code), issue 2's one-token GEMVs, and the hybrid V3 decode with its
# read probes on one buffer (the change under test) beside llama.cpp tg128 on the same file.
set -uo pipefail
E=$OUT/b; mkdir -p $E/ktk; trap 'cd $OUT && tar czf b.tgz b && rm -rf b' EXIT
N=/tmp/kt-b; mkdir -p $N; tar xJf .device-carry/s32b/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s32b/COMMIT)"
K='"ms_per_call":[0-9.]*\|"weight_gbps":[0-9.]*\|"dram_gbps":[0-9.]*\|"bandwidth_fraction":[0-9.]*\|"bandwidth_fraction_paired":[0-9.]*\|"peak_fraction":[0-9.]*\|"isa":"[a-z0-9]*"'
m() { timeout 90 $N/kt-bench moe "$@" --threads 16 --json 2>>$E/moe_err.txt >> $E/moe.jsonl; log "moe $* rc $? $(tail -1 $E/moe.jsonl | grep -o "$K" | tr '\n' ' ')"; }
rows() {
  m --shape deepseek-v3 --format q4_k --tokens 1 --seconds 3
  m --shape deepseek-v2-lite --format q4_k --tokens 1 --seconds 2
  m --shape deepseek-v3 --format int4 --group 128 --tokens 1 --seconds 2
  m --shape deepseek-v2-lite --format int4 --group 128 --tokens 1 --seconds 2
  m --shape deepseek-v3 --format q4_k --tokens 512 --seconds 2
  m --shape deepseek-v3 --format int4 --group 128 --tokens 512 --seconds 1
  m --shape deepseek-v2-lite --format int4 --group 128 --tokens 512 --seconds 1
}
rows
mkdir -p /tmp/anch && tar xJf .device-carry/s23peers/ktk.tar.xz -C /tmp/anch
timeout 110 python3 .device-carry/s23peers/bench_moe.py --ktk-dir /tmp/anch/ktk --out-dir $E/ktk --threads 15 \
  --methods amx_int4,llamafile_q4k --qlens 512,1 --extra-runs "" --min-time-s 0.3 --deadline-s 95 --bw-gib 2 \
  > $E/ktk/stdout.txt 2> $E/ktk/stderr.txt; log "ktk rc $?"; tail -14 $E/ktk/stdout.txt | tee -a $E/summary.txt
rows
timeout 150 $N/kt-bench matmul --tokens 1 --threads 16 --seconds 1 > $E/matmul_t1.txt 2>&1; log "matmul rc $?"
log done
