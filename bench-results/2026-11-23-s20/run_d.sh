#!/usr/bin/env bash
# Session 20 call D. s20xd = main a8cf1c0 (Q4_K back to 3 tokens) + the x20c knob: X 1 = the session start's
# few-token tiles (7b603e3: Q4_K row pairs at 2-3 tokens, the other formats on the column layout, one K slice). MoE
# layers at 512 and 128 tokens, the variants taking turns call by call in one process.
set -uo pipefail
E=$OUT/d; mkdir -p $E; trap 'cd $OUT && tar czf d.tgz d && rm -rf d' EXIT
B=/tmp/kt; X=/tmp/ktx; mkdir -p $B $X && tar xJf .device-carry/s20xd/bin.tar.xz -C $X
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s20xd/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
moe() { # name, args...
  local n=$1; shift
  KT_X_AB=0,1 timeout 80 $X/kt-bench moe "$@" --threads 16 --json > $E/$n.json 2> $E/$n.err
  log "$n rc $? $(grep x_variant $E/$n.err | tr '\n' ' ')"
}
for r in 1 2 3; do
  moe v3q6down_512_$r --shape deepseek-v3 --format q4_k --down-format q6_k --tokens 512 --seconds 4 --calls 10
  moe v3q4k_512_$r --shape deepseek-v3 --format q4_k --tokens 512 --seconds 4 --calls 10
done
moe v3q4k_128 --shape deepseek-v3 --format q4_k --tokens 128 --seconds 3 --calls 10
log done
