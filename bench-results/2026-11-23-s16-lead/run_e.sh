#!/usr/bin/env bash
# Session 16 call E (main at COMMIT, call D's binaries): issue 4's V3 Q4_K 512-token MoE on the AMX table (default)
# against KT_ISA=avx512 (the AVX512 table: 128-row busy items, the VNNI Q4_K GEMM), separate processes taking turns,
# three rounds; V2-Lite's Q4_K_M mix likewise.
set -uo pipefail
E=$OUT/e; mkdir -p $E; trap 'cd $OUT && tar czf e.tgz e && rm -rf e' EXIT
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s16d/bin.tar.xz -C $B ./kt-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s16d/COMMIT)"
for r in 1 2 3; do for s in deepseek-v3 deepseek-v2-lite; do for isa in amx avx512; do
  [ $((SECONDS-t0)) -gt 400 ] && continue
  KT_ISA=$isa timeout 60 $B/kt-bench moe --shape $s --format q4_k --tokens 512 --threads 16 --seconds 2 --calls 8 --json --cpu-time 2>>$E/errors.txt | sed "s/^{/{\"round\":$r,/" >> $E/moe.jsonl
  log "moe $s $isa round $r rc $?"; done; done; done
python3 - $E <<'PY' | tee $E/table.txt
import json, sys
for l in open(sys.argv[1] + '/moe.jsonl'):
    r = json.loads(l)
    print('moe', r['round'], r['shape'], r['isa'], '%.2f ms' % r['ms_per_call'], 'cpu %s' % r.get('cpu_ms_per_call'), 'dram %.1f' % r['dram_gbps'])
PY
log done
