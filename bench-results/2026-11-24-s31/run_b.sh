#!/usr/bin/env bash
# Session 31 call B: does the read probe's figure depend on where its buffer lies? 16 buffers
# of 1 GiB, all kept, each read in turn (best of the probe's five patterns), three rounds, and
# the probe as kt-bench runs it (a fresh 1 GiB buffer) after each round.
set -uo pipefail
E=$OUT/b; mkdir -p $E; trap "cd $OUT && tar czf b.tgz b && rm -rf b" EXIT
N=/tmp/kt-b; mkdir -p $N; tar xJf .device-carry/s31b/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(free -g | grep Mem)"
timeout 200 $N/membw_regions 16 16 1 3 > $E/regions16.out 2> $E/regions16.err; log "regions rc $?"
cat $E/regions16.out
timeout 200 $N/membw_regions 16 4 4 2 > $E/regions4x4.out 2> $E/regions4x4.err; log "regions 4x4 rc $?"
cat $E/regions4x4.out
log done
