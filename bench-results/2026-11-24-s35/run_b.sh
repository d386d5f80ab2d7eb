#!/usr/bin/env bash
# Session 35 call B: does the read probe owe part of its figure to the L3? `membw_reuse`: the probe's 15
# passes over one 1 GiB buffer back to back (hot, as kt's probe reads) against the same patterns each over
# the next of 8 other 1 GiB buffers (cold), in rounds; then kt-bench moe --ceiling once more for V3.
set -uo pipefail
B=$OUT/b; mkdir -p $B
N=/tmp/kt-b; mkdir -p $N; tar xJf .device-carry/s35/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $B/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); nproc $(nproc); L3 $(lscpu | grep -i 'L3' | tr -s ' '); $(cat .device-carry/s35/COMMIT)"
timeout 120 $N/membw_reuse 16 8 6 > $B/reuse_16.jsonl 2> $B/reuse_16.err; log "reuse 16 rc $?"
python3 - $B/reuse_16.jsonl <<'PY' | tee -a $B/summary.txt
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print("  round %d %-4s best %6.1f median %6.1f min %6.1f | best pattern %-34s median %6.1f | 8s pf1k passes %s" % (
        r["round"], r["kind"], r["best"], r["median"], r["min"], r["best_pattern"], r["best_pattern_median"], r["passes"][2]))
PY
timeout 120 $N/membw_reuse 8 8 3 > $B/reuse_8.jsonl 2> $B/reuse_8.err; log "reuse 8 threads rc $?"
python3 - $B/reuse_8.jsonl <<'PY' | tee -a $B/summary.txt
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print("  round %d %-4s best %6.1f median %6.1f min %6.1f" % (r["round"], r["kind"], r["best"], r["median"], r["min"]))
PY
log done
