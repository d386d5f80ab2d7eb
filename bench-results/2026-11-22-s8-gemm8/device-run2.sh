#!/usr/bin/env bash
# gemm8 optional second call: items at least four a thread (new2 = gemm8 at 1103a83) against the first
# call's new (82b50d7, two a thread) and s8base, 16 threads, interleaved x2: 16 tokens (q4_k, q2_k) and
# the 512-token command. Carry .device-carry/gemm8 and .device-carry/s8base. <= 150 s;
# results in $OUT/gemm8b.tgz (at EXIT).
set -uo pipefail
t0=$SECONDS
B=/tmp/gemm8-bin2; mkdir -p $B && tar xJf .device-carry/gemm8/bin2.tar.xz -C $B
cp .device-carry/s8base/kt-bench $B/kt-bench-base
o=$OUT/gemm8b; mkdir -p $o
trap 'cd $OUT && tar czf gemm8b.tgz gemm8b' EXIT
left() { [ $((SECONDS - t0)) -lt $1 ]; }
log() { echo "$* (at $((SECONDS - t0)) s)" | tee -a $o/log.txt; }
exe() { case $1 in base) echo $B/kt-bench-base;; new) echo $B/kt-bench;; *) echo $B/kt-bench-new2;; esac; }
mm() { local v=$1 tag=$2 lim=$3; shift 3
  timeout $lim $(exe $v) matmul "$@" --threads 16 --json 2>>$o/err.txt \
    | sed "s/^{/{\"bin\":\"$v\",\"tag\":\"$tag\",/" >> $o/$tag.jsonl
  log "$tag $v rc ${PIPESTATUS[0]}"; }
SH=7168x2048,2048x7168,1408x2048,18432x7168
for i in 1 2; do for v in base new2 new; do left 40 || continue
  mm $v t16 15 --tokens 16 --formats q4_k,q2_k --shapes $SH --seconds 0.2; done; done
for i in 1 2; do for v in base new2 new; do left 125 || continue
  mm $v t512 25 --tokens 512 --formats q4_k,q5_k,q2_k,q6_k --shapes $SH --seconds 0.25; done; done
log done
