#!/usr/bin/env bash
# Session 15 call D (main at COMMIT): 1) which read pattern pulls the most from DRAM (example membw_patterns,
# 16 and 15 threads, 1 GiB and 5 GB); 2) kt-bench machine (the new best-of-patterns probe, each pattern reported);
# 3) one-token GEMVs and MoE T=1 against the new probe; 4) V2-Lite 27-layer decode (new probe in its bound) with
# llama.cpp tg128 before and after; 5) hybrid test binaries.
set -uo pipefail
E=$OUT/d; mkdir -p $E/tests; trap 'cd $OUT && tar czf d.tgz d && rm -rf d' EXIT
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s15d/bin.tar.xz -C $B
xz -dc .device-carry/s15d/membw_patterns.xz > $B/membw_patterns; chmod +x $B/membw_patterns
xz -dc .device-carry/s13f/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/llamacpp-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s15d/COMMIT)"
P=1:0,2:0,4:0,8:0,16:0,1:1024,2:1024,4:1024,8:1024,16:1024,4:4096,8:4096,8:256,1:0
$B/membw_patterns 16 $P > $E/patterns16.jsonl 2>&1; log "patterns 16 $(python3 -c "
import json; print(' '.join('%s=%.1f' % (j['pattern'], j['gbps']) for j in map(json.loads, open('$E/patterns16.jsonl'))))")"
$B/membw_patterns 15 1:0,4:0,8:1024,16:1024 > $E/patterns15.jsonl 2>&1; log "patterns 15 $(python3 -c "
import json; print(' '.join('%s=%.1f' % (j['pattern'], j['gbps']) for j in map(json.loads, open('$E/patterns15.jsonl'))))")"
$B/membw_patterns 16 1:0,4:0,8:1024,16:1024 5033164800 > $E/patterns16_5g.jsonl 2>&1; log "patterns 16 5GB $(python3 -c "
import json; print(' '.join('%s=%.1f' % (j['pattern'], j['gbps']) for j in map(json.loads, open('$E/patterns16_5g.jsonl'))))")"
$B/kt-bench machine --threads 16 --json > $E/machine.json 2>&1; log "machine $(cat $E/machine.json)"
timeout 120 $B/kt-bench matmul --threads 16 --formats q4_K,bf16,q2_K --shapes 7168x2048,18432x7168,1408x2048 --tokens 1 --seconds 0.3 --json > $E/gemv.jsonl 2>>$E/errors.txt; log "gemv rc $?"
for s in deepseek-v3 deepseek-v2-lite; do timeout 60 $B/kt-bench moe --shape $s --format q4_k --tokens 1 --threads 16 --json >> $E/moe.jsonl 2>>$E/errors.txt; log "moe $s rc $?"; done
G=/tmp/v2l.gguf
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
dec() { env ${2:-} timeout 150 $B/kt-bench decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 5 \
    > $E/dec_$1.out 2> $E/dec_$1.err; log "dec $1 rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*' $E/dec_$1.out | head -3 | tr '\n' ' ')"; }
ll() { timeout 50 $B/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 5 > $E/llama$1.out 2> $E/llama$1.err; log "llama$1 rc $? $(grep -o '"avg_ts":[0-9.]*' $E/llama$1.out | tr '\n' ' ')"; }
ll 1; dec new_1; ll 2; dec new_2
rm -f $G
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures KT_REQUIRE_GPU=1
for t in $B/tests/hybrid_* $B/tests/cuda_host_link; do n=$(basename $t); [ $((SECONDS-t0)) -gt 520 ] && break
  timeout 90 $t > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
python3 - $E <<'PY' | tee $E/table.txt
import json, sys
E = sys.argv[1]
for l in open(E + '/gemv.jsonl'):
    r = json.loads(l)
    if 'skipped' in r: continue
    print('gemv', r['format'], f"{r['rows']}x{r['cols']}", '%.4f ms' % r['ms_per_call'], '%.1f GB/s' % r['weight_gbps'], '%.0f%% of %.1f' % (100 * r['bandwidth_fraction'], r['dram_gbps']))
for l in open(E + '/moe.jsonl'):
    r = json.loads(l)
    print('moe', r['shape'], 'T=%d' % r['tokens'], '%.3f ms' % r['ms_per_call'], 'w %.1f GB/s' % r['weight_gbps'], 'dram %.1f' % r['dram_gbps'], 'frac %.3f' % r['bandwidth_fraction'])
for f in ('new_1', 'new_2'):
    try:
        j = json.loads(open(f'{E}/dec_{f}.out').read().strip().splitlines()[-1])
        tl = j.get('decode_graph_timeline') or {}
        print('dec', f, round(j['decode_tokens_per_s'], 2), 'samples', [round(x, 1) for x in (j.get('decode_repetitions') or {}).get('samples', [])], 'bound', round(j.get('decode_bound_fraction') or 0, 3), 'dram', round(j['dram_gbps'], 1), j.get('dram_gbps_readings'), 'experts_ms', round(tl.get('experts_per_moe_layer_ms') or 0, 4), 'between', round(tl.get('gpu_between_moe_ms') or 0, 4), 'first', round(tl.get('first_moe_layer_experts_ms') or 0, 4))
        print('  per-layer GB/s', [round(x or 0, 1) for x in tl.get('experts_per_layer_gbps') or []])
    except Exception as e: print('dec', f, 'error', e)
PY
log done
