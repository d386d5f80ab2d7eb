#!/usr/bin/env bash
# Session 15 call I (main at COMMIT, the AVX512 Q5_0 one-token kernel) against call G's binary (f5ad10f, Q5_0 on
# the AVX2 kernel): 1) Q5_0 GEMVs at 16 threads, resident and from DRAM, the same binary with KT_ISA=avx2 for the
# old kernel; 2) V2-Lite MoE T=1 (its down projection is Q5_0), new / base interleaved x3; 3) decodes new / base;
# 4) tests.
set -uo pipefail
E=$OUT/i; mkdir -p $E/tests; trap 'cd $OUT && tar czf i.tgz i && rm -rf i' EXIT
B=/tmp/kt-bin; mkdir -p $B /tmp/base && tar xJf .device-carry/s15i/bin.tar.xz -C $B && tar xJf .device-carry/s15g/bin.tar.xz -C /tmp/base ./kt-bench
xz -dc .device-carry/s13f/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/llamacpp-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s15i/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for n in cpu_avx512_kernels matmul_backends moe_correctness lib_kt_kernels; do
  timeout 60 $B/tests/$n --test-threads 16 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
for r in 1 2; do for isa in amx avx2; do for res in --resident ""; do
  KT_ISA=$isa $B/kt-bench matmul --threads 16 --formats q5_0 --shapes 2048x1408,7168x2048 --tokens 1 --seconds 0.3 --json $res 2>>$E/errors.txt | sed "s/^{/{\"r\":$r,/" >> $E/q50.jsonl
done; done; done; log "q5_0 gemv"
for r in 1 2 3; do for b in new base; do
  exe=$B/kt-bench; [ $b = base ] && exe=/tmp/base/kt-bench
  timeout 60 $exe moe --shape deepseek-v2-lite --format q4_k --tokens 1 --threads 16 --seconds 2 --json 2>>$E/errors.txt | sed "s/^{/{\"bin\":\"$b\",/" >> $E/moe.jsonl
done; done; log "moe"
G=/tmp/v2l.gguf
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
dec() { timeout 150 $2 decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 5 \
    > $E/dec_$1.out 2> $E/dec_$1.err; log "dec $1 rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*' $E/dec_$1.out | head -3 | tr '\n' ' ')"; }
timeout 50 $B/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 5 > $E/llama1.out 2> $E/llama1.err; log "llama1 rc $? $(grep -o '"avg_ts":[0-9.]*' $E/llama1.out | tr '\n' ' ')"
dec new_1 $B/kt-bench; dec base_1 /tmp/base/kt-bench; dec base_2 /tmp/base/kt-bench; dec new_2 $B/kt-bench
rm -f $G
python3 - $E <<'PY' | tee $E/table.txt
import json, sys
E = sys.argv[1]
for l in open(E + '/q50.jsonl'):
    r = json.loads(l)
    print('q5_0', 'r%d' % r['r'], r['isa'], 'resident' if r['resident'] else 'dram', f"{r['rows']}x{r['cols']}", '%.1f us' % (r['ms_per_call'] * 1e3), '%.1f GB/s' % r['weight_gbps'])
for l in open(E + '/moe.jsonl'):
    r = json.loads(l)
    print('moe', r['bin'], '%.4f ms' % r['ms_per_call'], '%.1f GB/s' % r['weight_gbps'], 'dram %.1f' % r['dram_gbps'])
for f in ('new_1', 'base_1', 'base_2', 'new_2'):
    try:
        j = json.loads(open(f'{E}/dec_{f}.out').read().strip().splitlines()[-1])
        tl = j.get('decode_graph_timeline') or {}
        print('dec', f, round(j['decode_tokens_per_s'], 2), 'bound', round(j.get('decode_bound_fraction') or 0, 3), 'experts_ms', round(tl.get('experts_per_moe_layer_ms') or 0, 4))
    except Exception as e: print('dec', f, 'error', e)
PY
log done
