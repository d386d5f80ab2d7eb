#!/usr/bin/env bash
# Device A/B for int4v2l (issue 4: V2-Lite int4 g128 MoE prefill <= 8 ms, V3 int4 T=512 <= 80 ms, no regression).
# A = session 5's base binary (main at db43f03), B = a binary with the int4v2l branch merged.
# Usage (repository root on the device): OLD=.device-carry/s5base/kt-bench NEW=<new kt-bench> bash THIS
# Interleaved old/new, 3 rounds; one JSON line per run in $OUT/moe.jsonl (field "bin"); then a summary.
set -uo pipefail
OLD=${OLD:-.device-carry/s5base/kt-bench}; NEW=${NEW:?set NEW to the new kt-bench}
mkdir -p $OUT; t0=$SECONDS
m() { # m LABEL EXE ARGS...
  local label=$1 exe=$2; shift 2
  timeout 90 "$exe" moe "$@" --json --cpu-time 2>>$OUT/errors.txt | sed "s/^{/{\"bin\":\"$label\",/" >> $OUT/moe.jsonl
}
for rep in 1 2 3; do
  for b in old new; do exe=$OLD; [ $b = new ] && exe=$NEW
    m $b $exe --shape deepseek-v2-lite --format int4 --group 128 --tokens 512 --threads 16 --seconds 1
    [ $rep -le 2 ] && m $b $exe --shape deepseek-v3 --format int4 --group 128 --tokens 512 --threads 16 --seconds 1
  done
  echo "round $rep done at $((SECONDS-t0))s"
done
# If time remains: the AMX kernel's weight prefetch on V2-Lite (new binary; default 2:l1).
for pf in 4:l1 2:l2 none; do
  [ $((SECONDS-t0)) -gt 420 ] && { echo "prefetch $pf skipped"; continue; }
  m new-pf-$pf $NEW --shape deepseek-v2-lite --format int4 --group 128 --tokens 512 --threads 16 --seconds 1 --prefetch $pf
done
python3 - $OUT/moe.jsonl <<'PY' | tee $OUT/summary.txt
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for shape in ('deepseek-v2-lite', 'deepseek-v3'):
    for b in ['old', 'new'] + ['new-pf-' + p for p in ('4:l1', '2:l2', 'none')]:
        ms = [r['ms_per_call'] for r in rows if r['bin'] == b and r['shape'] == shape]
        if ms: print(shape, b, 'ms per call:', ' '.join('%.2f' % v for v in ms), '| best %.2f' % min(ms))
PY
cd $OUT && tar czf int4v2l.tgz moe.jsonl summary.txt errors.txt 2>/dev/null; echo "total $((SECONDS-t0))s"
