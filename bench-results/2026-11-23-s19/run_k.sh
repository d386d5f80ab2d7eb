#!/usr/bin/env bash
# Session 19 call K (main at COMMIT = 0e499ec, s19f: one K chunk over the call-wide records):
# issue 2's 512-token GEMMs, kt beside ggml (both cycling 16 x LLC), every format and shape.
set -uo pipefail
E=$OUT/k; mkdir -p $E; trap 'cd $OUT && tar czf k.tgz k && rm -rf k' EXIT
B=/tmp/kt; mkdir -p $B && tar xJf .device-carry/s19f/bin.tar.xz -C $B ./kt-bench
xz -dc .device-carry/s15peers/ggml_matmul.xz > $B/ggml_matmul; chmod +x $B/ggml_matmul
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s19f/COMMIT)"
CYC=5033164800
F="q4_K q5_K q2_K q6_K q8_0 bf16"; S="2048x7168 7168x2048 1408x2048 2048x1408 18432x7168"
: > $E/gemm.jsonl
for f in $F; do
  [ $((SECONDS-t0)) -gt 470 ] && continue
  timeout 90 $B/kt-bench matmul --threads 16 --formats $f --shapes ${S// /,} --tokens 512 --seconds 0.4 --json >> $E/gemm.jsonl 2>>$E/errors.txt
  log "kt $f rc $?"
  for s in $S; do
    case "$f:$s" in q[2-6]_K:*x1408) continue;; esac
    [ $((SECONDS-t0)) -gt 530 ] && continue
    timeout 40 $B/ggml_matmul $f $s 512 16 0.3 $CYC >> $E/gemm.jsonl 2>>$E/errors.txt
  done
  log "ggml $f"
done
python3 - $E <<'PY' | tee $E/table.txt
import json, sys
E = sys.argv[1]
rows = []
for l in open(E + '/gemm.jsonl'):
    try: rows.append(json.loads(l))
    except Exception: pass
rows = [r for r in rows if 'skipped' not in r]
kt = {(r['format'].lower(), r['rows'], r['cols']): r for r in rows if 'peer' not in r}
gg = {(r['format'].lower(), r['rows'], r['cols']): r for r in rows if 'peer' in r}
for k, r in kt.items():
    g = gg.get(k)
    print('gemm', k[0], f'{k[1]}x{k[2]}', '%.3f ms' % r['ms_per_call'], ('ggml %.3f ggml/kt %.2f' % (g['ms_per_call'], g['ms_per_call'] / r['ms_per_call'])) if g else 'ggml -', '%.0f GOP/s' % r['gops'], '%.0f%% of %.0f' % (100 * r['peak_fraction'], r['peak_gops']))
PY
log done
