#!/usr/bin/env bash
# Session 29 call H: the code to be committed (the short GEMV at 8 columns a warp, kt_load16 as
# before call G): GPU tests, and ncu of the eager V3 decode's GEMV kernels (4-layer file) to check
# the mid and long GEMVs are back at call E's times and the short one keeps call G's.
set -uo pipefail
E=$OUT/h; mkdir -p $E; trap "cd $OUT && tar czf h.tgz h && rm -rf h" EXIT
N=/tmp/kt-new; mkdir -p $N; tar xJf .device-carry/s29h/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s29h/COMMIT)"
export KT_REQUIRE_GPU=1
for t in cuda_linear cuda_host_link cuda_mla hybrid_forward hybrid_graph; do
  timeout 240 $N/$t --test-threads 2 > $E/test_$t.log 2>&1; log "test $t rc $? $(grep -o 'test result.*' $E/test_$t.log | tr '\n' ' ')"
done
unset KT_REQUIRE_GPU
G=/tmp/v3_4.gguf
timeout 60 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 4 --out $G --threads 16 > $E/gen_4.log 2>&1; log "gen 4 rc $?"
timeout 80 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base -k regex:gemv_nt \
  --log-file $E/ncu_gemv.csv $N/kt-bench decode --model $G --rules rules/deepseek-v3-hybrid.yaml \
  --prompt-len 64 --gen-len 2 --threads 16 --eager --json > $E/ncu_gemv_app.out 2> $E/ncu_gemv_app.err
log "ncu gemv rc $?"
rm -f $G
log done
