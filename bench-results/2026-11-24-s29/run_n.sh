#!/usr/bin/env bash
# Session 29 call N: the review's mend (gemm_nt's dispatch as one match, --eager's one boolean, the
# tests' shared memory check): cuda_linear and hybrid_graph, and kt-bench decode --eager once.
set -uo pipefail
E=$OUT/n; mkdir -p $E; trap "cd $OUT && tar czf n.tgz n && rm -rf n" EXIT
N=/tmp/kt-n; mkdir -p $N; tar xJf .device-carry/s29n/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(nvidia-smi -L | head -1); $(cat .device-carry/s29n/COMMIT)"
export KT_REQUIRE_GPU=1
for t in cuda_linear hybrid_graph; do
  timeout 200 $N/$t --test-threads 2 > $E/test_$t.log 2>&1; log "test $t rc $? $(grep -o 'test result.*' $E/test_$t.log)"
done
unset KT_REQUIRE_GPU
timeout 120 $N/kt-bench decode --model deepseek-v2-lite --layers 4 --rules rules/deepseek-v2-lite-hybrid.yaml \
  --prompt-len 64 --gen-len 16 --eager > $E/eager.out 2> $E/eager.err; log "eager rc $? $(grep '^decode:' $E/eager.out)"
log done
