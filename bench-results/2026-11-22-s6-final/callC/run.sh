#!/usr/bin/env bash
# Session 6 call C (CPU): kt main at 52e295c (kqamx folded AMX Q4_K GEMM above 32 tokens; q56order: AVX2 order,
# AVX512 unchanged by default) vs the session's start (s6base, fc3b061), interleaved: MoE prefill/decode, GEMM 512;
# CPU test binaries; then kt-kernel 0.7.2 (KTransformers) on the same shapes with what time is left.
set -uo pipefail
E=$OUT/c; mkdir -p $E/tests $E/ktk; trap 'cd $OUT && tar czf c.tgz c' EXIT
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s6b/bin.tar.xz -C $B; cp .device-carry/s6base/kt-bench $B/kt-bench-base
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
m() { local label=$1 exe=$2; shift 2
  timeout 60 "$exe" moe "$@" --json --cpu-time 2>>$E/moe_err.txt | sed "s/^{/{\"bin\":\"$label\",/" >> $E/moe.jsonl; log "moe $label $* rc ${PIPESTATUS[0]}"; }
for rep in 1 2; do for b in new base; do exe=$B/kt-bench; [ $b = base ] && exe=$B/kt-bench-base
  m $b $exe --shape deepseek-v3 --format q4_k --tokens 512 --threads 16 --seconds 0.5
  m $b $exe --shape deepseek-v2-lite --format int4 --group 128 --tokens 512 --threads 16 --seconds 0.5
  m $b $exe --shape deepseek-v2-lite --format q4_k --tokens 512 --threads 16 --seconds 0.5
  [ $rep = 1 ] && m $b $exe --shape deepseek-v3 --format int4 --group 128 --tokens 512 --threads 16 --seconds 0.5
  [ $rep = 1 ] && m $b $exe --shape deepseek-v3 --format q4_k --tokens 1 --threads 16 --seconds 0.5
  [ $rep = 1 ] && m $b $exe --shape deepseek-v2-lite --format q4_k --tokens 1 --threads 16 --seconds 0.5
done; done
for rep in 1 2; do for b in new base; do exe=$B/kt-bench; [ $b = base ] && exe=$B/kt-bench-base
  [ $((SECONDS-t0)) -gt 250 ] && continue
  timeout 40 $exe matmul --tokens 512 --formats q4_k --threads 16 --seconds 0.3 --json --shapes 7168x2048,2048x7168,1408x2048,18432x7168 \
    2>>$E/mm_err.txt | sed "s/^{/{\"bin\":\"$b\",/" >> $E/gemm512.jsonl; log "gemm $b rc ${PIPESTATUS[0]}"
done; done
for t in $B/tests/*; do n=$(basename $t); [ $((SECONDS-t0)) -gt 330 ] && { log "tests stop at $n"; break; }
  timeout 60 $t --test-threads 8 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
left=$((440 - (SECONDS - t0)))
if [ $left -gt 50 ]; then mkdir -p /tmp/anch && tar xJf .device-carry/s6c/ktk.tar.xz -C /tmp/anch
  timeout $left python3 .device-carry/s6c/bench_moe.py --ktk-dir /tmp/anch/ktk --out-dir $E/ktk --threads 15 \
   --methods amx_int4,llamafile_q4k --qlens 512,1 --extra-runs "" --min-time-s 0.5 --deadline-s $((left - 15)) --bw-gib 2 \
   > $E/ktk/stdout.txt 2> $E/ktk/stderr.txt; log "ktk rc $?"; tail -12 $E/ktk/stdout.txt
fi
python3 - $E <<'PY' | tee $E/table.txt
import json, sys
E = sys.argv[1]
for l in open(E + '/moe.jsonl'):
    r = json.loads(l)
    print('moe', r['bin'], r['shape'], r.get('gate'), r['isa'], 'T=%d' % r['tokens'], '%.3f ms' % r['ms_per_call'], 'dram %.1f' % r['dram_gbps'], 'wgbps %.1f' % r.get('weight_gbps', 0))
try:
    for l in open(E + '/gemm512.jsonl'):
        j = json.loads(l); print('gemm512', j['bin'], f"{j['rows']}x{j['cols']}", j['isa'], round(j['ms_per_call'], 3), 'peak_frac', round(j['peak_fraction'], 3))
except Exception as e: print('gemm error', e)
PY
