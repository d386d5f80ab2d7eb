#!/usr/bin/env bash
# Session 17 call N (main at COMMIT = s17n, after the review's tidy: nibble entry macro, shared Q2_K / Q3_K plane
# constants, Q8_1 sums only for formats with a minimum): the CPU / AMX / MoE tests.
set -uo pipefail
E=$OUT/n; mkdir -p $E/tests; trap 'cd $OUT && tar czf n.tgz n && rm -rf n' EXIT
B=/tmp/kt; mkdir -p $B && tar xJf .device-carry/s17n/bin.tar.xz -C $B
echo "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s17n/COMMIT)" | tee $E/summary.txt
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for n in $(ls $B/tests); do
  timeout 120 $B/tests/$n --test-threads 16 > $E/tests/$n.txt 2>&1; echo "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)" | tee -a $E/summary.txt; done
grep -h -E "FAILED|panicked" $E/tests/*.txt | head -20
