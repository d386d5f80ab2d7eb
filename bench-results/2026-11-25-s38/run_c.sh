#!/usr/bin/env bash
# Session 38 call C: issue 2 with the final code (COMMIT): kt-bench matmul at 1 and 512 tokens on every
# format and shape of the issue, beside ggml's ggml_mul_mat (kt-bench/peers/ggml_matmul) in the same call,
# 16 threads, 0.5 s of calls a case; kt's GEMV fractions are of the read probes taken between its rounds.
set -uo pipefail
E=$OUT/c; mkdir -p $E; trap 'cd $OUT && tar czf c.tgz c && rm -rf c' EXIT
C=.device-carry/s38; N=/tmp/kt-c; mkdir -p $N; tar xJf $C/bin.tar.xz -C $N ./kt-bench ./ggml_matmul; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $C/COMMIT)"
shapes="2048x7168 7168x2048 1408x2048 2048x1408 18432x7168"; formats="q4_K q5_K q2_K q6_K q8_0 bf16"
kt() { local s0=$SECONDS; timeout $2 $N/kt-bench matmul --tokens $1 --threads 16 --seconds 0.5 --json \
    --formats "$(echo $formats | tr ' ' ,)" --shapes "$(echo $shapes | tr ' ' ,)" >> $E/matmul.jsonl 2>> $E/errors.txt; log "kt t$1 rc $? wall $((SECONDS-s0))s"; }
gg() { local s0=$SECONDS; for f in $formats; do for s in $shapes; do
    case "$f:$s" in q[2-6]_K:*x1408) continue;; esac
    [ $((SECONDS-t0)) -gt $2 ] && { log "ggml t$1 stop at $f $s"; return; }
    timeout 40 $N/ggml_matmul $f $s $1 16 0.5 >> $E/matmul.jsonl 2>> $E/errors.txt || log "ggml $f $s t$1 rc $?"
  done; done; log "ggml t$1 wall $((SECONDS-s0))s"; }
kt 1 200; gg 1 330; kt 512 200; gg 512 560
python3 - $E/matmul.jsonl <<'PY' | tee $E/table.txt
import json, sys
rows = [r for r in (json.loads(l) for l in open(sys.argv[1]) if l.strip()) if "skipped" not in r]
kt = {(r["format"].lower(), r["rows"], r["cols"], r["tokens"]): r for r in rows if "peer" not in r}
gg = {(r["format"].lower(), r["rows"], r["cols"], r["tokens"]): r for r in rows if "peer" in r}
print(f"{'format':6} {'shape':>11} {'tok':>4} {'kt ms':>9} {'ggml ms':>9} {'kt/ggml':>7} {'kt GB/s':>8} {'of bw':>6} {'beside':>6} {'kt GOP/s':>9} {'of pk':>6}")
for k, r in kt.items():
    g = gg.get(k); nan = float('nan')
    print(f"{k[0]:6} {str(k[1])+'x'+str(k[2]):>11} {k[3]:>4} {r['ms_per_call']:9.4f} {g['ms_per_call'] if g else nan:9.4f} "
          f"{(g['ms_per_call']/r['ms_per_call']) if g else nan:7.2f} {r['weight_gbps']:8.1f} {100*r['bandwidth_fraction']:5.0f}% "
          f"{100*(r.get('bandwidth_fraction_paired') or nan):5.0f}% {r['gops']:9.1f} {100*r['peak_fraction']:5.1f}%")
PY
log done
