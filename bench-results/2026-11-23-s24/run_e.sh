#!/usr/bin/env bash
# Session 24 call E: the new code's (ab257e9) hybrid / GPU test binaries (--features cuda, KT_REQUIRE_GPU=1)
# (the rows with main run in call F: both carries together exceed the 64 MiB a call takes).
set -uo pipefail
E=$OUT/e; mkdir -p $E/tests; trap "cd $OUT && tar czf e.tgz e && rm -rf e" EXIT
B=/tmp/kt-bin; T=/tmp/s24t; mkdir -p $B $T && tar xJf .device-carry/s24gpu/bin.tar.xz -C $T
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); tests $(cat .device-carry/s24gpu/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures KT_REQUIRE_GPU=1
for n in $(ls $T); do
  timeout 150 $T/$n --test-threads 16 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
grep -h -E "FAILED|panicked" $E/tests/*.txt | head -20
log done
