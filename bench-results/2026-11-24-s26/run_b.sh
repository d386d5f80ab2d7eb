#!/usr/bin/env bash
# Session 26 call B: the load-time repack alone (kt-kernels/examples/repack_rate.rs, a random Q4_K stack of V2-Lite's
# 1408x2048 gate shape to int4-g128 / int8-g128), new (main after e9a342c) and base (3e103fe) binaries, 1 and 16 threads.
set -uo pipefail
E=$OUT/b; mkdir -p $E; trap 'cd $OUT && tar czf b.tgz b && rm -rf b' EXIT
C=.device-carry/s26b; B=/tmp/kt-bin; mkdir -p $B
for x in repack_rate repack_rate_base; do xz -dc $C/$x.xz > $B/$x; chmod +x $B/$x; done
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(grep -m1 'cpu MHz' /proc/cpuinfo); $(nproc) cpus"
r() { # binary threads experts reps
  KT_THREADS=$2 /usr/bin/time -f "%e s wall %U user %S sys %F majfl %R minfl" -o $E/time_$1_$2.txt timeout 120 $B/$1 $3 1408x2048 $4 > $E/$1_$2.txt 2>&1
  log "$1 threads $2 rc $?: $(tr '\n' ' ' < $E/$1_$2.txt) | $(cat $E/time_$1_$2.txt)"
}
r repack_rate 1 16 1
r repack_rate_base 1 16 1
r repack_rate 16 512 2
r repack_rate_base 16 512 1
r repack_rate 16 512 1
log done
