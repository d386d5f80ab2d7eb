#!/usr/bin/env bash
# Session 5 call F2 (CPU side + the mla5 candidate): MoE prefill A/B new (main after the session-5 merges) vs
# base (db43f03), interleaved; V3 Q4_K with the bf16 path on/off; CPU test binaries; mla5's candidate kernel
# (tests + timings, its run3.sh); kt-kernel 0.7.2 anchor with what time is left.
set -uo pipefail
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s5f2/bin.tar.xz -C $B; cp .device-carry/s5base/kt-bench $B/kt-bench-base
t0=$SECONDS; F=$OUT/f2; mkdir -p $F/tests $F/ktk
timeout 200 bash .device-carry/mla5/run3.sh > $F/mla5_stdout.txt 2>&1; echo "mla5 rc $? $((SECONDS-t0))s"
m() { local label=$1 exe=$2; shift 2
  timeout 60 "$exe" moe "$@" --json --cpu-time 2>>$F/moe_errors.txt | sed "s/^{/{\"bin\":\"$label\",/" >> $F/moe.jsonl; }
for rep in 1 2; do for b in new base; do exe=$B/kt-bench; [ $b = base ] && exe=$B/kt-bench-base
  m $b $exe --shape deepseek-v2-lite --format int4 --group 128 --tokens 512 --threads 16 --seconds 0.5
  [ $rep = 1 ] && m $b $exe --shape deepseek-v3 --format int4 --group 128 --tokens 512 --threads 16 --seconds 0.5
done; done; echo "int4 done $((SECONDS-t0))s"
for rep in 1 2; do
  KT_MOE_BF16=0 m new $B/kt-bench --shape deepseek-v3 --format q4_k --tokens 512 --threads 16 --seconds 0.5
  KT_MOE_BF16=1 m new-bf16 $B/kt-bench --shape deepseek-v3 --format q4_k --tokens 512 --threads 16 --seconds 0.5
  m base $B/kt-bench-base --shape deepseek-v3 --format q4_k --tokens 512 --threads 16 --seconds 0.5
done
KT_MOE_BF16=0 m new $B/kt-bench --shape deepseek-v2-lite --format q4_k --tokens 512 --threads 16 --seconds 0.5
KT_MOE_BF16=1 m new-bf16 $B/kt-bench --shape deepseek-v2-lite --format q4_k --tokens 512 --threads 16 --seconds 0.5
echo "q4k done $((SECONDS-t0))s"
for t in $B/tests/*; do n=$(basename $t); timeout 60 $t --test-threads 8 > $F/tests/$n.txt 2>&1; echo "test $n rc $? $(grep -E '^test result' $F/tests/$n.txt | tail -1)"; done
KT_MOE_BF16=1 timeout 60 $B/tests/moe_correctness --test-threads 8 > $F/tests/moe_correctness_bf16.txt 2>&1; echo "test moe_correctness bf16 rc $?"
echo "tests done $((SECONDS-t0))s"
python3 - $F/moe.jsonl <<'PY'
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print(r['bin'], r['shape'], r.get('gate'), r['isa'], 'T=%d' % r['tokens'], '%.2f ms' % r['ms_per_call'], 'bw %.1f' % r['dram_gbps'])
PY
left=$((560 - (SECONDS - t0)))
if [ $left -gt 60 ]; then mkdir -p /tmp/anch && tar xJf .device-carry/s5f2/ktk.tar.xz -C /tmp/anch
  timeout $left python3 .device-carry/s5f2/bench_moe.py --ktk-dir /tmp/anch/ktk --out-dir $F/ktk --threads 15 \
   --methods amx_int4,llamafile_q4k --qlens 512 --extra-runs "" --min-time-s 0.5 --deadline-s $((left - 20)) --bw-gib 2 \
   > $F/ktk/stdout.txt 2> $F/ktk/stderr.txt; echo "ktk rc $? at $((SECONDS-t0))s"; tail -15 $F/ktk/stdout.txt
fi
cd $OUT && tar czf f2.tgz f2
