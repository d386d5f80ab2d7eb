#!/usr/bin/env bash
# Session 4 final call F2 (CPU side): kt-kernel 0.7.2 anchor (15 threads); MoE prefill and decode A/B,
# new (main after session 4's merges) vs base (main at the session's start, c19e54d), interleaved; GEMM at
# 512 tokens new vs base; GEMV/pool/MoE at 1 token (device_decode.sh, new then base); CPU test binaries.
set -uo pipefail
B=/tmp/kt-bin; mkdir -p $B /tmp/anch && tar xJf .device-carry/s4f2/bin.tar.xz -C $B && tar xJf .device-carry/s4f2/ktk.tar.xz -C /tmp/anch
t0=$SECONDS
mkdir -p $OUT/ktk $OUT/moe $OUT/gemm $OUT/tests
( timeout 150 python3 $B/bench_moe.py --ktk-dir /tmp/anch/ktk --out-dir $OUT/ktk --threads 15 \
   --methods amx_int4,llamafile_q4k --qlens 1,512 --extra-runs "" --min-time-s 0.5 --deadline-s 130 --bw-gib 2 \
   > $OUT/ktk/stdout.txt 2> $OUT/ktk/stderr.txt; echo "ktk rc $? at $((SECONDS-t0))s" )
m() { # m LABEL EXE ARGS...: one kt-bench moe case appended to moe.jsonl with its label
  local label=$1 exe=$2; shift 2
  timeout 60 "$exe" moe "$@" --json 2>>$OUT/moe/errors.txt | sed "s/^{/{\"bin\":\"$label\",/" >> $OUT/moe/moe.jsonl
}
for rep in 1 2; do
  for b in new base; do exe=$B/kt-bench; [ $b = base ] && exe=$B/kt-bench-base
    m $b $exe --shape deepseek-v3 --format q4_k --tokens 512 --threads 16 --seconds 0.5
    m $b $exe --shape deepseek-v2-lite --format int4 --group 128 --tokens 512 --threads 16 --seconds 0.5
  done
done
echo "moe prefill A/B done $((SECONDS-t0))s"
for b in new base; do exe=$B/kt-bench; [ $b = base ] && exe=$B/kt-bench-base
  m $b $exe --shape deepseek-v3 --format int4 --group 128 --tokens 512 --threads 16 --seconds 0.5
  m $b $exe --shape deepseek-v2-lite --format q4_k --tokens 512 --threads 16 --seconds 0.5
  KT_ISA=avx512 m $b-avx512 $exe --shape deepseek-v3 --format q4_k --tokens 512 --threads 16 --seconds 0.5
done
m new $B/kt-bench --shape deepseek-v3 --format q4_k --tokens 512 --threads 15 --seconds 0.5
m new $B/kt-bench --shape deepseek-v2-lite --format int4 --group 128 --tokens 512 --threads 15 --seconds 0.5
echo "moe prefill done $((SECONDS-t0))s"
for b in new base; do exe=$B/kt-bench; [ $b = base ] && exe=$B/kt-bench-base
  timeout 120 $exe matmul --tokens 512 --threads 16 --seconds 0.3 --shapes 2048x7168,7168x2048,1408x2048,18432x7168 \
    --json > $OUT/gemm/$b.jsonl 2>>$OUT/gemm/errors.txt
done
echo "gemm done $((SECONDS-t0))s"
mv $B/kt-bench-base $B/base.keep  # device_decode.sh: new binary only
BIN=$B SECONDS_PER_CASE=0.25 bash kt-bench/scripts/device_decode.sh > $OUT/decode_stdout.txt 2>&1; echo "decode done $((SECONDS-t0))s"
for t in $B/tests/*; do n=$(basename $t); [ $((SECONDS-t0)) -gt 520 ] && { echo "test $n skipped"; continue; }
  timeout 60 $t --test-threads 8 > $OUT/tests/$n.txt 2>&1; echo "test $n rc $? $(grep -E '^test result' $OUT/tests/$n.txt | tail -1)"; done
python3 - $OUT/moe/moe.jsonl <<'PY'
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print(r['bin'], r['shape'], r.get('gate'), r['isa'], 'T=%d' % r['tokens'], 'thr=%d' % r['threads'], '%.2f ms' % r['ms_per_call'],
          '%.0f%% of %s peak' % (100 * r['peak_fraction'], r['peak_kind']), '%.0f%% of bw %.1f' % (100 * r['bandwidth_fraction'], r['dram_gbps']))
PY
python3 - $OUT/gemm/new.jsonl $OUT/gemm/base.jsonl <<'PY'
import json, sys
for f in sys.argv[1:]:
    for l in open(f):
        try: r = json.loads(l)
        except Exception: continue
        print(f.split('/')[-1], {k: r[k] for k in r if k in ('format','shape','rows','cols','tokens','ms_per_call','peak_fraction','isa')})
PY
cd $OUT && tar czf all.tgz ktk moe gemm decode tests *.txt 2>/dev/null
tail -12 ktk/stdout.txt; tail -40 decode_stdout.txt
