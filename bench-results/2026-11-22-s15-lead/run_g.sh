#!/usr/bin/env bash
# Session 15 call G (main at COMMIT: the GEMV's L2 lead, the best-of-patterns read probe, 16 x LLC GEMV cycles):
# 1) tests; 2) kt-bench machine (each probe pattern); 3) issue 2's one-token GEMVs, kt and ggml side by side;
# 4) issue 4's MoE T=1; 5) V2-Lite 27-layer decode and llama.cpp tg128.
set -uo pipefail
E=$OUT/g; mkdir -p $E/tests; trap 'cd $OUT && tar czf g.tgz g && rm -rf g' EXIT
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s15g/bin.tar.xz -C $B
xz -dc .device-carry/s15peers/ggml_matmul.xz > $B/ggml_matmul; chmod +x $B/ggml_matmul
xz -dc .device-carry/s13f/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/llamacpp-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s15g/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures KT_REQUIRE_GPU=1
for n in lib_kt_kernels cpu_avx512_kernels matmul_backends matmul_no_alloc moe_correctness moe_api hybrid_graph hybrid_forward; do
  timeout 60 $B/tests/$n --test-threads 16 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
unset KT_REQUIRE_GPU
$B/kt-bench machine --threads 16 --json > $E/machine.json 2>&1; log "machine $(cat $E/machine.json)"
CYC=5033164800
F="q4_K q5_K q2_K q6_K q8_0 bf16"; S="2048x7168 7168x2048 1408x2048 2048x1408 18432x7168"
: > $E/gemv.jsonl
for f in $F; do
  timeout 150 $B/kt-bench matmul --threads 16 --formats $f --shapes ${S// /,} --tokens 1 --seconds 0.3 --json >> $E/gemv.jsonl 2>>$E/errors.txt
  log "kt $f rc $?"
  for s in $S; do
    case "$f:$s" in q[2-6]_K:*x1408) continue;; esac
    [ $((SECONDS-t0)) -gt 330 ] && continue
    timeout 30 $B/ggml_matmul $f $s 1 16 0.3 $CYC >> $E/gemv.jsonl 2>>$E/errors.txt
  done
  log "ggml $f"
done
for s in deepseek-v3 deepseek-v2-lite; do timeout 60 $B/kt-bench moe --shape $s --format q4_k --tokens 1 --threads 16 --seconds 1 --json >> $E/moe.jsonl 2>>$E/errors.txt; log "moe $s rc $?"; done
G=/tmp/v2l.gguf
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
timeout 50 $B/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 5 > $E/llama1.out 2> $E/llama1.err; log "llama1 rc $? $(grep -o '"avg_ts":[0-9.]*' $E/llama1.out | tr '\n' ' ')"
timeout 150 $B/kt-bench decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 5 > $E/dec.out 2> $E/dec.err
log "dec rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*' $E/dec.out | head -3 | tr '\n' ' ')"
rm -f $G
python3 - $E <<'PY' | tee $E/table.txt
import json, sys
E = sys.argv[1]
rows = []
for l in open(E + '/gemv.jsonl'):
    try: rows.append(json.loads(l))
    except Exception: pass
rows = [r for r in rows if 'skipped' not in r]
kt = {(r['format'].lower(), r['rows'], r['cols']): r for r in rows if 'peer' not in r}
gg = {(r['format'].lower(), r['rows'], r['cols']): r for r in rows if 'peer' in r}
for k, r in kt.items():
    g = gg.get(k)
    print('gemv', k[0], f'{k[1]}x{k[2]}', '%.4f ms' % r['ms_per_call'], ('ggml %.4f ggml/kt %.2f' % (g['ms_per_call'], g['ms_per_call'] / r['ms_per_call'])) if g else 'ggml -', '%.1f GB/s' % r['weight_gbps'], '%.0f%% of %.1f' % (100 * r['bandwidth_fraction'], r['dram_gbps']))
for l in open(E + '/moe.jsonl'):
    r = json.loads(l)
    print('moe', r['shape'], 'T=%d' % r['tokens'], '%.3f ms' % r['ms_per_call'], 'w %.1f GB/s' % r['weight_gbps'], 'dram %.1f' % r['dram_gbps'], 'frac %.3f' % r['bandwidth_fraction'])
try:
    j = json.loads(open(f'{E}/dec.out').read().strip().splitlines()[-1])
    tl = j.get('decode_graph_timeline') or {}
    print('dec', round(j['decode_tokens_per_s'], 2), 'samples', [round(x, 1) for x in (j.get('decode_repetitions') or {}).get('samples', [])], 'bound', round(j.get('decode_bound_fraction') or 0, 3), 'dram', round(j['dram_gbps'], 1), j.get('dram_gbps_readings'), 'experts_ms', round(tl.get('experts_per_moe_layer_ms') or 0, 4), 'routed_gbps', round(tl.get('routed_gbps') or 0, 1), 'between', round(tl.get('gpu_between_moe_ms') or 0, 4))
except Exception as e: print('dec error', e)
PY
log done
