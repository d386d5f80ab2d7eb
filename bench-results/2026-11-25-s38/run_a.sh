#!/usr/bin/env bash
# Session 38 call A: the final code (COMMIT) on the device. Every CPU and GPU test binary the
# device's ISAs and GPU reach (KT_REQUIRE_GPU=1, the repository's fixtures), then issue 4's MoE rows
# beside kt-kernel 0.7.2 in the same call (ours, kt-kernel at 15 threads, ours again).
set -uo pipefail
E=$OUT/a; mkdir -p $E/tests $E/ktk; trap 'cd $OUT && tar czf a.tgz a && rm -rf a' EXIT
C=.device-carry/s38; N=/tmp/kt-a; mkdir -p $N; tar xJf $C/bin.tar.xz -C $N; chmod +x $N/* $N/tests/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nproc) cpus; $(nvidia-smi -L | head -1); $(cat $C/COMMIT)"
lscpu > $E/lscpu.txt 2>&1
timeout 60 $N/kt-bench machine --threads 16 --json > $E/machine.json 2> $E/machine.err; log "machine rc $?"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures KT_REQUIRE_GPU=1
for t in $N/tests/*; do n=$(basename $t); [ $((SECONDS-t0)) -gt 200 ] && { log "tests stop at $n"; break; }
  timeout 90 $t --test-threads 16 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
unset KT_TEST_FIXTURES KT_REQUIRE_GPU
K='"ms_per_call":[0-9.]*\|"weight_gbps":[0-9.]*\|"dram_gbps":[0-9.]*\|"bandwidth_fraction":[0-9.]*\|"bandwidth_fraction_paired":[0-9.]*\|"of_read_ceiling":[0-9.]*\|"peak_fraction":[0-9.]*\|"isa":"[a-z0-9]*"'
m() { timeout 90 $N/kt-bench moe "$@" --threads 16 --json 2>>$E/moe_err.txt >> $E/moe.jsonl; log "moe $* rc $? $(grep -v "\"read_ceiling\"" $E/moe.jsonl | tail -1 | grep -o "$K" | tr '\n' ' ')"; }
rows() {
  m --shape deepseek-v3 --format q4_k --tokens 1 --seconds 4 --ceiling
  m --shape deepseek-v2-lite --format q4_k --tokens 1 --seconds 2
  m --shape deepseek-v3 --format int4 --group 128 --tokens 1 --seconds 2
  m --shape deepseek-v2-lite --format int4 --group 128 --tokens 1 --seconds 2
  m --shape deepseek-v3 --format q4_k --tokens 512 --seconds 2
  m --shape deepseek-v3 --format int4 --group 128 --tokens 512 --seconds 1
  m --shape deepseek-v2-lite --format int4 --group 128 --tokens 512 --seconds 1
}
rows
mkdir -p /tmp/anch && tar xJf $C/ktk.tar.xz -C /tmp/anch
timeout 120 python3 $C/bench_moe.py --ktk-dir /tmp/anch/ktk --out-dir $E/ktk --threads 15 \
  --methods amx_int4,llamafile_q4k --qlens 512,1 --extra-runs "" --min-time-s 0.3 --deadline-s 100 --bw-gib 2 \
  > $E/ktk/stdout.txt 2> $E/ktk/stderr.txt; log "ktk rc $?"; tail -14 $E/ktk/stdout.txt | tee -a $E/summary.txt
[ $((SECONDS-t0)) -lt 470 ] && rows
log done
