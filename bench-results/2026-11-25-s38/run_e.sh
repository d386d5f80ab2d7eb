#!/usr/bin/env bash
# Session 38 call E: issue 2's 512-token GEMMs again on call D's instance, the way session 19's calls K / K2
# ran them (one kt process per format over the five shapes, then ggml's ggml_matmul per case, then kt again),
# 16 threads; fraction of each kt process's VNNI probe.
set -uo pipefail
E=$OUT/e; mkdir -p $E; trap 'cd $OUT && tar czf e.tgz e && rm -rf e' EXIT
C=.device-carry/s38; N=/tmp/kt-e; mkdir -p $N; tar xJf $C/bin.tar.xz -C $N ./kt-bench ./ggml_matmul; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $C/COMMIT)"
S="2048x7168 7168x2048 1408x2048 2048x1408 18432x7168"; F="q4_K q5_K q2_K q6_K q8_0 bf16"
kt() { for f in $F; do timeout 60 $N/kt-bench matmul --threads 16 --formats $f --shapes ${S// /,} --tokens 512 --seconds 0.4 --json 2>> $E/errors.txt \
  | sed "s/^{/{\"round\":$1,/" >> $E/gemm.jsonl; done; log "kt round $1"; }
gg() { for f in $F; do for s in $S; do case "$f:$s" in q[2-6]_K:*x1408) continue;; esac
  timeout 40 $N/ggml_matmul $f $s 512 16 0.3 >> $E/gemm.jsonl 2>> $E/errors.txt; done; done; log "ggml"; }
kt 1; gg; [ $((SECONDS-t0)) -lt 400 ] && kt 2
python3 - $E/gemm.jsonl <<'PY' | tee $E/table.txt
import json, sys
rows = [r for r in (json.loads(l) for l in open(sys.argv[1]) if l.strip()) if "skipped" not in r]
gg = {(r["format"].lower(), r["rows"], r["cols"]): r for r in rows if "peer" in r}
for r in rows:
    if "peer" in r: continue
    g = gg.get((r["format"].lower(), r["rows"], r["cols"]))
    print("round %d %-5s %5dx%-5d %.3f ms ggml %.3f ggml/kt %.2f %.0f GOP/s %.1f%% of %.0f" % (r["round"], r["format"], r["rows"], r["cols"],
        r["ms_per_call"], g["ms_per_call"] if g else float("nan"), g["ms_per_call"] / r["ms_per_call"] if g else float("nan"),
        r["gops"], 100 * r["peak_fraction"], r["peak_gops"]))
PY
log done
