#!/usr/bin/env bash
# Session 31 call E: issue 2's one-token GEMVs and issue 4's one-token layers with the read
# probe also taken between the calls (`beside`), on one instance.
set -uo pipefail
E=$OUT/e; mkdir -p $E; trap "cd $OUT && tar czf e.tgz e && rm -rf e" EXIT
N=/tmp/kt-e; mkdir -p $N; tar xJf .device-carry/s31e/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s31e/COMMIT)"
gemv() { # tag
  timeout 280 $N/kt-bench matmul --formats q4_k,q5_k,q2_k,q6_k,q8_0,bf16 --shapes 2048x7168,7168x2048,1408x2048,2048x1408,18432x7168 \
    --tokens 1 --threads 16 --seconds 1 > $E/gemv_$1.out 2> $E/gemv_$1.err
  log "gemv $1 rc $?"; cat $E/gemv_$1.out | tee -a $E/summary.txt
}
moe() { # tag shape seconds
  timeout 150 $N/kt-bench moe --shape $2 --format q4_k --tokens 1 --threads 16 --seconds $3 --json > $E/moe_$1.out 2> $E/moe_$1.err
  log "moe $1 rc $? $(grep -o '"ms_per_call":[0-9.]*\|"weight_gbps":[0-9.]*\|"dram_gbps":[0-9.]*\|"bandwidth_fraction":[0-9.]*\|"bandwidth_fraction_paired":[0-9.]*\|"dram_gbps_around":[^]]*' $E/moe_$1.out | tr '\n' ' ')"
}
gemv 1
moe v3_1 deepseek-v3 5
moe v2l_1 deepseek-v2-lite 4
[ $((SECONDS-t0)) -lt 330 ] && gemv 2
log done
