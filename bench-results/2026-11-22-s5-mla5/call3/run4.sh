#!/usr/bin/env bash
# mla5 candidate timings only (its tests passed in s5f2): old, new, old, new; lines printed as they come.
set -uo pipefail
bin=$(mktemp -d); tar xJf .device-carry/mla5/bins3.tar.xz -C "$bin"; mkdir -p $OUT/m
for round in 1 2; do for v in old new; do
  timeout 70 "$bin/cuda_mla_timing_$v" > $OUT/m/${v}_$round.txt 2>&1; echo "== $v round $round rc $?"; grep -h "KT_MLA\|x 4096\|x 1024\|16384\|prefill" $OUT/m/${v}_$round.txt | head -12
done; done
cd $OUT && tar czf m.tgz m
