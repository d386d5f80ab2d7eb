#!/usr/bin/env bash
# Session 9 final call 2 (CPU): main at the commit in COMMIT (the session-8 merges) vs the session's start
# (s9base, c6bb6aa), interleaved: MoE targets of issue 4 (512 tokens and 1 token), the issue-2 GEMM at 512 tokens
# and GEMV at 1 token, Q4_K at 16 tokens; the CPU test binaries (AMX + AVX512 paths); kt-kernel 0.7.2 at 15 threads.
set -uo pipefail
E=$OUT/f2; mkdir -p $E/tests $E/ktk; trap 'cd $OUT && tar czf f2.tgz f2' EXIT
D=.device-carry/s9f2; B=/tmp/kt-bin; mkdir -p $B && tar xJf $D/bin.tar.xz -C $B; cp .device-carry/s9base/kt-bench $B/kt-bench-base
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat $D/COMMIT)"
m() { local label=$1 exe=$2; shift 2
  timeout 60 "$exe" moe "$@" --threads 16 --json --cpu-time 2>>$E/moe_err.txt | sed "s/^{/{\"bin\":\"$label\",/" >> $E/moe.jsonl; log "moe $label $* rc ${PIPESTATUS[0]}"; }
for rep in 1 2; do order="new base"; [ $rep = 2 ] && order="base new"; for b in $order; do exe=$B/kt-bench; [ $b = base ] && exe=$B/kt-bench-base; [ $rep = 2 ] && b2=$b || b2=$b
  [ $((SECONDS-t0)) -gt 170 ] && continue
  m $b $exe --shape deepseek-v3 --format q4_k --tokens 512 --seconds 0.5
  m $b $exe --shape deepseek-v2-lite --format int4 --group 128 --tokens 512 --seconds 0.5
  m $b $exe --shape deepseek-v3 --format q4_k --tokens 1 --seconds 0.5
  m $b $exe --shape deepseek-v2-lite --format q4_k --tokens 1 --seconds 0.5
  [ $rep = 1 ] && m $b $exe --shape deepseek-v3 --format int4 --group 128 --tokens 512 --seconds 0.5
done; done
mm() { local label=$1 exe=$2 tag=$3; shift 3
  timeout 40 $exe matmul "$@" --threads 16 --json 2>>$E/mm_err.txt | sed "s/^{/{\"bin\":\"$label\",/" >> $E/$tag.jsonl; log "matmul $tag $label rc ${PIPESTATUS[0]}"; }
SH=7168x2048,2048x7168,1408x2048,18432x7168
# gemm9's A/B at 512 tokens (new = gemm9's code as merged, rec1 = whole-group records items at 512, base)
[ $((SECONDS-t0)) -lt 300 ] && { OUT=$E bash .device-carry/gemm9/run2.sh > $E/gemm9b.txt 2>&1; log "gemm9 run2 rc $?"; }
# GEMV (1 token): measured in the shared call of gemm8 (mid8) this session
for t in $B/tests/*; do n=$(basename $t); [ $((SECONDS-t0)) -gt 430 ] && { log "tests stop at $n"; break; }
  timeout 90 $t --test-threads 8 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
left=$((540 - (SECONDS - t0)))
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
for f in ():
    try:
        for l in open(f'{E}/{f}.jsonl'):
            j = json.loads(l)
            if 'skipped' in j: print(f, j.get('bin'), j.get('format'), j.get('rows'), j.get('cols'), 'skipped', j['skipped']); continue
            print(f, j['bin'], j['format'], f"{j['rows']}x{j['cols']}", j['isa'], round(j['ms_per_call'], 3), 'peak_frac', round(j.get('peak_fraction') or 0, 3), 'bw_frac', round(j.get('bandwidth_fraction') or 0, 3))
    except Exception as e: print(f, 'error', e)
PY
