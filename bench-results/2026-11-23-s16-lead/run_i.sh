#!/usr/bin/env bash
# Session 16 call I: main with the larger decode items (COMMIT of s16i) against call D's binary (fc3bcc8, 128-row items),
# separate processes taking turns: the MoE and kernel tests of the new binary; V2-Lite 27-layer hybrid decode x3 each
# (and llama.cpp once); kt-bench moe int4 g128 T=1 (the repacked layout's decode, which shares the plan) x3 each.
set -uo pipefail
E=$OUT/i; mkdir -p $E/tests; trap 'cd $OUT && tar czf i.tgz i && rm -rf i' EXIT
N=/tmp/new; O=/tmp/old; mkdir -p $N $O
tar xJf .device-carry/s16i/bin.tar.xz -C $N; tar xJf .device-carry/s16d/bin.tar.xz -C $O ./kt-bench
xz -dc .device-carry/s13f/llamacpp-bench.xz > $N/llamacpp-bench; chmod +x $N/llamacpp-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); new $(cat .device-carry/s16i/COMMIT) old $(cat .device-carry/s16d/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures KT_REQUIRE_GPU=1
for n in lib_kt_kernels moe_correctness moe_api moe_no_alloc moe_repacked_moe moe_q4k_amx hybrid_graph hybrid_forward; do
  timeout 60 $N/tests/$n --test-threads 16 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
unset KT_REQUIRE_GPU
for r in 1 2 3; do for b in new old; do B=/tmp/$b
  for s in deepseek-v2-lite deepseek-v3; do
    timeout 60 $B/kt-bench moe --shape $s --format int4 --group 128 --tokens 1 --threads 16 --seconds 2 --json 2>>$E/errors.txt | sed "s/^{/{\"bin\":\"$b\",\"round\":$r,/" >> $E/moe.jsonl
  done; log "int4 $b round $r"; done; done
G=/tmp/v2l.gguf
timeout 60 $N/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
timeout 50 $N/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 5 > $E/llama1.out 2> $E/llama1.err; log "llama1 rc $? $(grep -o '"avg_ts":[0-9.]*' $E/llama1.out | tr '\n' ' ')"
for r in 1 2 3; do for b in new old; do B=/tmp/$b
  [ $((SECONDS-t0)) -gt 530 ] && continue
  timeout 70 $B/kt-bench decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 5 > $E/dec_${b}_$r.out 2> $E/dec_${b}_$r.err
  log "dec $b #$r rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*' $E/dec_${b}_$r.out | head -3 | tr '\n' ' ')"
done; done
rm -f $G
python3 - $E <<'PY' | tee $E/table.txt
import json, sys, glob, os
E = sys.argv[1]
for l in open(E + '/moe.jsonl'):
    r = json.loads(l)
    print('moe', r['bin'], r['round'], r['shape'], r['gate'], 'T=%d' % r['tokens'], '%.4f ms' % r['ms_per_call'], 'dram %.1f' % r['dram_gbps'])
for f in sorted(glob.glob(E + '/dec_*.out')):
    try:
        j = json.loads(open(f).read().strip().splitlines()[-1])
        tl = j.get('decode_graph_timeline') or {}
        print(os.path.basename(f), round(j['decode_tokens_per_s'], 2), [round(x, 1) for x in (j.get('decode_repetitions') or {}).get('samples', [])], 'bound', round(j.get('decode_bound_fraction') or 0, 3), 'experts_ms', round(tl.get('experts_per_moe_layer_ms') or 0, 4), 'routed', round(tl.get('routed_gbps') or 0, 1), 'between', round(tl.get('gpu_between_moe_ms') or 0, 4))
    except Exception as e: print(f, 'error', e)
PY
log done
