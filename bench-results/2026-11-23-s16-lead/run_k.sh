#!/usr/bin/env bash
# Session 16 call K (call D's binary, fc3bcc8): the hybrid decode's prefetch rounds with this session's GEMV, in-process
# (KT_PREFETCH_AB=3:off,1,2,3: three rounds of graph decodes of the same tokens, one per setting), two processes.
set -uo pipefail
E=$OUT/k; mkdir -p $E; trap 'cd $OUT && tar czf k.tgz k && rm -rf k' EXIT
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s16d/bin.tar.xz -C $B ./kt-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s16d/COMMIT)"
G=/tmp/v2l.gguf
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
for r in 1 2; do
  KT_PREFETCH_AB=3:off,1,2,3 timeout 120 $B/kt-bench decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 3 > $E/dec_$r.out 2> $E/dec_$r.err
  log "dec #$r rc $?"
done
rm -f $G
python3 - $E <<'PY' | tee $E/table.txt
import json, sys, glob, os, collections
E = sys.argv[1]
for f in sorted(glob.glob(E + '/dec_*.out')):
    try:
        j = json.loads(open(f).read().strip().splitlines()[-1])
        by = collections.defaultdict(list)
        for x in j.get('prefetch_ab') or []:
            tl = x.get('decode_graph_timeline') or {}
            by[str(x['prefetch_rounds'])].append('%.2f (%.4f)' % (x['decode_tokens_per_s'], tl.get('experts_per_moe_layer_ms') or 0))
        print(os.path.basename(f), 'headline %.2f' % j['decode_tokens_per_s'], dict(by))
    except Exception as e: print(f, 'error', e)
PY
log done
