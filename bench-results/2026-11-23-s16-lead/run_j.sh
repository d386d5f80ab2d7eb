#!/usr/bin/env bash
# Session 16 call J: the hybrid V2-Lite decode, this session's GEMV changes (fc3bcc8, call D's binary; the code of main
# but comments and the reverted plan) against the session's start (d56a403's kernels, session 15 call I's binary:
# the later 93072cc emits the same GEMV instructions), separate processes taking turns, three rounds; llama.cpp once.
set -uo pipefail
E=$OUT/j; mkdir -p $E; trap 'cd $OUT && tar czf j.tgz j && rm -rf j' EXIT
N=/tmp/new; O=/tmp/old; mkdir -p $N $O
tar xJf .device-carry/s16d/bin.tar.xz -C $N ./kt-bench; tar xJf .device-carry/s15i/bin.tar.xz -C $O ./kt-bench
xz -dc .device-carry/s13f/llamacpp-bench.xz > $N/llamacpp-bench; chmod +x $N/llamacpp-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); new $(cat .device-carry/s16d/COMMIT) old $(cat .device-carry/s15i/COMMIT)"
G=/tmp/v2l.gguf
timeout 60 $N/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
timeout 50 $N/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 5 > $E/llama1.out 2> $E/llama1.err; log "llama1 rc $? $(grep -o '"avg_ts":[0-9.]*' $E/llama1.out | tr '\n' ' ')"
for r in 1 2 3; do for b in old new; do B=/tmp/$b
  [ $((SECONDS-t0)) -gt 500 ] && continue
  timeout 70 $B/kt-bench decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 5 > $E/dec_${b}_$r.out 2> $E/dec_${b}_$r.err
  log "dec $b #$r rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*' $E/dec_${b}_$r.out | head -3 | tr '\n' ' ')"
done; done
rm -f $G
python3 - $E <<'PY' | tee $E/table.txt
import json, sys, glob, os
E = sys.argv[1]
for f in sorted(glob.glob(E + '/dec_*.out')):
    try:
        j = json.loads(open(f).read().strip().splitlines()[-1])
        tl = j.get('decode_graph_timeline') or {}
        print(os.path.basename(f), round(j['decode_tokens_per_s'], 2), [round(x, 1) for x in (j.get('decode_repetitions') or {}).get('samples', [])], 'bound', round(j.get('decode_bound_fraction') or 0, 3), 'dram', round(j['dram_gbps'], 1), 'experts_ms', round(tl.get('experts_per_moe_layer_ms') or 0, 4), 'routed', round(tl.get('routed_gbps') or 0, 1), 'between', round(tl.get('gpu_between_moe_ms') or 0, 4))
    except Exception as e: print(f, 'error', e)
PY
log done
