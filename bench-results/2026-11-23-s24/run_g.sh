#!/usr/bin/env bash
# Session 24 call G (main at ab257e9, --features cuda: the combine inside the fused decode job): issue 4's
# MoE rows (1 and 512 tokens) with kt-kernel 0.7.2 in the same call; issue 6: kt's V2-Lite 27-layer hybrid decode
# (its bound fraction) and GPU prefill. llama.cpp is not in this call (session 19 measured it: tg128 32.48 tok/s).
set -uo pipefail
E=$OUT/g; mkdir -p $E/ktk; trap 'cd $OUT && tar czf g.tgz g && rm -rf g' EXIT
B=/tmp/kt-bin; mkdir -p $B && xz -dc .device-carry/s24cuda/kt-bench.xz > $B/kt-bench && chmod +x $B/kt-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s24cuda/COMMIT)"
$B/kt-bench machine --threads 16 --json > $E/machine.json 2>&1; log "machine $(head -c 300 $E/machine.json)"
m() { timeout 60 $B/kt-bench moe "$@" --threads 16 --json 2>>$E/moe_err.txt >> $E/moe.jsonl; log "moe $* rc $? $(tail -1 $E/moe.jsonl | grep -o '"ms_per_call":[0-9.]*')"; }
m --shape deepseek-v3 --format q4_k --tokens 1 --seconds 2
m --shape deepseek-v2-lite --format q4_k --tokens 1 --seconds 2
m --shape deepseek-v3 --format q4_k --tokens 512 --seconds 2
m --shape deepseek-v3 --format int4 --group 128 --tokens 512 --seconds 1
m --shape deepseek-v2-lite --format int4 --group 128 --tokens 512 --seconds 1
mkdir -p /tmp/anch && tar xJf .device-carry/s23peers/ktk.tar.xz -C /tmp/anch
timeout 110 python3 .device-carry/s23peers/bench_moe.py --ktk-dir /tmp/anch/ktk --out-dir $E/ktk --threads 15 \
  --methods amx_int4,llamafile_q4k --qlens 512,1 --extra-runs "" --min-time-s 0.3 --deadline-s 95 --bw-gib 2 \
  > $E/ktk/stdout.txt 2> $E/ktk/stderr.txt; log "ktk rc $?"; tail -12 $E/ktk/stdout.txt
m --shape deepseek-v3 --format q4_k --tokens 512 --seconds 2
m --shape deepseek-v2-lite --format int4 --group 128 --tokens 512 --seconds 1
m --shape deepseek-v3 --format q4_k --tokens 1 --seconds 2
m --shape deepseek-v2-lite --format q4_k --tokens 1 --seconds 2
G=/tmp/v2l.gguf
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
for r in 1 2; do
  [ $((SECONDS-t0)) -gt 450 ] && continue
  timeout 60 $B/kt-bench decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 5 > $E/dec_$r.out 2> $E/dec_$r.err
  log "dec rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*' $E/dec_$r.out | head -3 | tr '\n' ' ')"
done
[ $((SECONDS-t0)) -lt 500 ] && { timeout 75 $B/kt-bench prefill --model $G --rules rules/gpu-prefill/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --threads 16 --json > $E/prefill_gpu.out 2> $E/prefill_gpu.err; log "prefill gpu rc $? $(grep -o '"tokens_per_s":[0-9.]*' $E/prefill_gpu.out | head -1)"; }
rm -f $G
python3 - $E <<'PY' | tee $E/table.txt
import json, sys
E = sys.argv[1]
for l in open(E + '/moe.jsonl'):
    r = json.loads(l)
    print('moe', r['shape'], r['gate'], r['down'], 'T=%d' % r['tokens'], r['isa'], '%.3f ms' % r['ms_per_call'], 'w %.1f GB/s' % r['weight_gbps'], 'dram %.1f' % r['dram_gbps'], 'bwfrac %.3f' % r['bandwidth_fraction'], 'peakfrac %.3f' % r['peak_fraction'])
for r_ in (1, 2):
    try:
        j = json.loads(open(f'{E}/dec_{r_}.out').read().strip().splitlines()[-1])
        tl = j.get('decode_graph_timeline') or {}
        print('dec', r_, round(j['decode_tokens_per_s'], 2), 'samples', [round(x, 1) for x in (j.get('decode_repetitions') or {}).get('samples', [])], 'bound', round(j.get('decode_bound_fraction') or 0, 3), 'dram', round(j['dram_gbps'], 1), 'experts_ms', round(tl.get('experts_per_moe_layer_ms') or 0, 4), 'routed_gbps', round(tl.get('routed_gbps') or 0, 1), 'between', round(tl.get('gpu_between_moe_ms') or 0, 4))
    except Exception as e: print('dec error', e)
PY
log done
