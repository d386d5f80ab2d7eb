#!/usr/bin/env bash
# Session 16 call D (main at COMMIT: four-stream GEMVs for the integer formats and BF16, 3-line prefetch windows):
# 1) device tests (CPU kernels, AMX, MoE, hybrid GPU); 2) probe; 3) issue 4's MoE targets + kt-kernel 0.7.2 in the same
# call; 4) issue 6: V2-Lite 27 layers, llama.cpp pp1024/tg128 and kt hybrid decode + GPU-prefill; 5) issue 2's one-token
# GEMVs beside ggml (both cycling 16 x LLC).
set -uo pipefail
E=$OUT/d; mkdir -p $E/tests $E/ktk; trap 'cd $OUT && tar czf d.tgz d && rm -rf d' EXIT
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s16d/bin.tar.xz -C $B
xz -dc .device-carry/s15peers/ggml_matmul.xz > $B/ggml_matmul; chmod +x $B/ggml_matmul
xz -dc .device-carry/s13f/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/llamacpp-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s16d/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures KT_REQUIRE_GPU=1
for n in lib_kt_kernels cpu_avx512_kernels matmul_backends matmul_no_alloc moe_correctness moe_api moe_q4k_amx cpu_amx_gemm hybrid_graph hybrid_forward; do
  timeout 60 $B/tests/$n --test-threads 16 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
unset KT_REQUIRE_GPU
$B/kt-bench machine --threads 16 --json > $E/machine.json 2>&1; log "machine $(head -c 400 $E/machine.json)"
m() { timeout 60 $B/kt-bench moe "$@" --threads 16 --json 2>>$E/moe_err.txt >> $E/moe.jsonl; log "moe $* rc $?"; }
m --shape deepseek-v3 --format q4_k --tokens 1 --seconds 2
m --shape deepseek-v2-lite --format q4_k --tokens 1 --seconds 2
m --shape deepseek-v3 --format q4_k --tokens 512 --seconds 1
m --shape deepseek-v3 --format int4 --group 128 --tokens 512 --seconds 1
m --shape deepseek-v2-lite --format int4 --group 128 --tokens 512 --seconds 1
mkdir -p /tmp/anch && tar xJf .device-carry/s15peers/ktk.tar.xz -C /tmp/anch
timeout 110 python3 .device-carry/s15peers/bench_moe.py --ktk-dir /tmp/anch/ktk --out-dir $E/ktk --threads 15 \
  --methods amx_int4,llamafile_q4k --qlens 512,1 --extra-runs "" --min-time-s 0.3 --deadline-s 95 --bw-gib 2 \
  > $E/ktk/stdout.txt 2> $E/ktk/stderr.txt; log "ktk rc $?"; tail -12 $E/ktk/stdout.txt
G=/tmp/v2l.gguf
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
timeout 80 $B/llamacpp-bench -m $G -p 1024 -n 128 -t 16 -r 3 > $E/llama1.out 2> $E/llama1.err; log "llama1 rc $? $(grep -o '"test":"[a-z0-9]*"\|"avg_ts":[0-9.]*' $E/llama1.out | tr '\n' ' ')"
timeout 80 $B/kt-bench decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 5 > $E/dec.out 2> $E/dec.err
log "dec rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*' $E/dec.out | head -3 | tr '\n' ' ')"
timeout 75 $B/kt-bench prefill --model $G --rules rules/gpu-prefill/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --threads 16 --json > $E/prefill_gpu.out 2> $E/prefill_gpu.err; log "prefill gpu rc $? $(grep -o '"tokens_per_s":[0-9.]*' $E/prefill_gpu.out | head -1)"
rm -f $G
CYC=5033164800
F="q4_K q5_K q2_K q6_K q8_0 bf16"; S="2048x7168 7168x2048 1408x2048 2048x1408 18432x7168"
: > $E/gemv.jsonl
for f in $F; do
  [ $((SECONDS-t0)) -gt 480 ] && continue
  timeout 60 $B/kt-bench matmul --threads 16 --formats $f --shapes ${S// /,} --tokens 1 --seconds 0.3 --json >> $E/gemv.jsonl 2>>$E/errors.txt
  log "kt $f rc $?"
  for s in $S; do
    case "$f:$s" in q[2-6]_K:*x1408) continue;; esac
    [ $((SECONDS-t0)) -gt 520 ] && continue
    timeout 30 $B/ggml_matmul $f $s 1 16 0.3 $CYC >> $E/gemv.jsonl 2>>$E/errors.txt
  done
  log "ggml $f"
done
python3 - $E <<'PY' | tee $E/table.txt
import json, sys
E = sys.argv[1]
for l in open(E + '/moe.jsonl'):
    r = json.loads(l)
    print('moe', r['shape'], r['gate'], r['down'], 'T=%d' % r['tokens'], r['isa'], '%.3f ms' % r['ms_per_call'], 'w %.1f GB/s' % r['weight_gbps'], 'dram %.1f' % r['dram_gbps'], 'bwfrac %.3f' % r['bandwidth_fraction'], 'peakfrac %.3f' % r['peak_fraction'])
try:
    j = json.loads(open(f'{E}/dec.out').read().strip().splitlines()[-1])
    tl = j.get('decode_graph_timeline') or {}
    print('dec', round(j['decode_tokens_per_s'], 2), 'samples', [round(x, 1) for x in (j.get('decode_repetitions') or {}).get('samples', [])], 'bound', round(j.get('decode_bound_fraction') or 0, 3), 'dram', round(j['dram_gbps'], 1), j.get('dram_gbps_readings'), 'experts_ms', round(tl.get('experts_per_moe_layer_ms') or 0, 4), 'routed_gbps', round(tl.get('routed_gbps') or 0, 1), 'between', round(tl.get('gpu_between_moe_ms') or 0, 4))
except Exception as e: print('dec error', e)
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
PY
log done
