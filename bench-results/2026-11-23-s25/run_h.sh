#!/usr/bin/env bash
# Session 25 call H (main at COMMIT, CPU build: 256-row V3 decode items, the repacked decode job and VNNI kernel):
# issue 4's MoE rows (1 and 512 tokens, GGUF Q4_K and int4 g128) with kt-kernel 0.7.2 in the same call.
set -uo pipefail
E=$OUT/h; mkdir -p $E/ktk; trap 'cd $OUT && tar czf h.tgz h && rm -rf h' EXIT
B=/tmp/kt-bin; mkdir -p $B && xz -dc .device-carry/s25h/kt-bench.xz > $B/kt-bench && chmod +x $B/kt-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s25h/COMMIT)"
$B/kt-bench machine --threads 16 --json > $E/machine.json 2>&1; log "machine $(head -c 300 $E/machine.json)"
m() { timeout 60 $B/kt-bench moe "$@" --threads 16 --json 2>>$E/moe_err.txt >> $E/moe.jsonl; log "moe $* rc $? $(tail -1 $E/moe.jsonl | grep -o '"ms_per_call":[0-9.]*')"; }
m --shape deepseek-v3 --format q4_k --tokens 1 --seconds 2
m --shape deepseek-v2-lite --format q4_k --tokens 1 --seconds 2
m --shape deepseek-v3 --format int4 --group 128 --tokens 1 --seconds 2
m --shape deepseek-v2-lite --format int4 --group 128 --tokens 1 --seconds 2
m --shape deepseek-v3 --format q4_k --tokens 512 --seconds 2
m --shape deepseek-v3 --format int4 --group 128 --tokens 512 --seconds 1
m --shape deepseek-v2-lite --format int4 --group 128 --tokens 512 --seconds 1
mkdir -p /tmp/anch && tar xJf .device-carry/s23peers/ktk.tar.xz -C /tmp/anch
timeout 110 python3 .device-carry/s23peers/bench_moe.py --ktk-dir /tmp/anch/ktk --out-dir $E/ktk --threads 15 \
  --methods amx_int4,llamafile_q4k --qlens 512,1 --extra-runs "" --min-time-s 0.3 --deadline-s 95 --bw-gib 2 \
  > $E/ktk/stdout.txt 2> $E/ktk/stderr.txt; log "ktk rc $?"; tail -12 $E/ktk/stdout.txt
m --shape deepseek-v3 --format q4_k --tokens 512 --seconds 2
m --shape deepseek-v2-lite --format int4 --group 128 --tokens 512 --seconds 1
m --shape deepseek-v3 --format q4_k --tokens 1 --seconds 2
m --shape deepseek-v2-lite --format q4_k --tokens 1 --seconds 2
python3 - $E <<'PY' | tee $E/table.txt
import json, sys
E = sys.argv[1]
for l in open(E + '/moe.jsonl'):
    r = json.loads(l)
    print('moe', r['shape'], r['gate'], r['down'], 'T=%d' % r['tokens'], r['isa'], '%.3f ms' % r['ms_per_call'], 'w %.1f GB/s' % r['weight_gbps'], 'dram %.1f' % r['dram_gbps'], 'bwfrac %.3f' % r['bandwidth_fraction'], 'peakfrac %.3f' % r['peak_fraction'])
PY
log done
