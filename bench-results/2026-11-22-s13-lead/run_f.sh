#!/usr/bin/env bash
# Session 13 final call F: main at COMMIT (prefetch rounds, hybrid_graph one model at a time, avx2s13's kernels)
# vs session 12's final kt-bench (aa575b7). The host-side GPU test binaries (hybrid_*, cuda_host_link, cuda_pinned, cuda_runtime; the CUDA kernels are unchanged since aa575b7) (hybrid_graph three more times); no CPU test
# binary, then V2-Lite 27-layer hybrid decode: the in-process prefetch A/B (2 rounds / off) and whole processes
# new/base interleaved x2 with --repetitions 5, llama.cpp tg128 -r 5 before and after.
set -uo pipefail
E=$OUT/f; mkdir -p $E/tests; trap 'cd $OUT && tar czf f.tgz f && rm -rf f' EXIT
B=/tmp/kt-bin; mkdir -p $B $B/cpu && tar xJf .device-carry/s13f/bin.tar.xz -C $B
xz -dc .device-carry/s13base/kt-bench.xz > $B/kt-bench-base; chmod +x $B/kt-bench-base
xz -dc .device-carry/s13f/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/llamacpp-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s13f/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for t in $B/tests/*; do n=$(basename $t)
  KT_REQUIRE_GPU=1 timeout 60 $t --test-threads 8 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
for i in 1 2 3; do KT_REQUIRE_GPU=1 timeout 40 $B/tests/hybrid_graph > $E/tests/hybrid_graph_$i.txt 2>&1; log "hybrid_graph again $i rc $? $(grep -E '^test result' $E/tests/hybrid_graph_$i.txt | tail -1)"; done
G=/tmp/v2l.gguf
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
dec() { # tag exe [env]
  env ${3:-} timeout 100 $2 decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 5 \
    > $E/dec_$1.out 2> $E/dec_$1.err; log "dec $1 rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*' $E/dec_$1.out | head -3 | tr '\n' ' ')"; }
ll() { timeout 50 $B/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 5 > $E/llama$1.out 2> $E/llama$1.err; log "llama$1 rc $? $(grep -o '"avg_ts":[0-9.]*' $E/llama$1.out | tr '\n' ' ')"; }
ll 1
dec ab $B/kt-bench KT_PREFETCH_AB=3:2,off
dec base_1 $B/kt-bench-base; dec new_1 $B/kt-bench; dec new_2 $B/kt-bench; dec base_2 $B/kt-bench-base
ll 2
python3 - $E <<'PY' | tee $E/table.txt
import json, sys
E = sys.argv[1]
try:
    j = json.loads(open(f'{E}/dec_ab.out').read().strip().splitlines()[-1])
    for r in j.get('prefetch_ab', []):
        tl = r.get('decode_graph_timeline') or {}
        print('ab', r.get('prefetch_rounds'), round(r['decode_tokens_per_s'], 2), 'experts_ms', round(tl.get('experts_per_moe_layer_ms') or 0, 4), 'between', round(tl.get('gpu_between_moe_ms') or 0, 4), 'pf_us', round(tl.get('prefetch_us') or 0, 1), 'pf_mb', round(tl.get('prefetch_mb') or 0, 2))
except Exception as e: print('ab error', e)
for f in ('ab', 'base_1', 'new_1', 'new_2', 'base_2'):
    try:
        j = json.loads(open(f'{E}/dec_{f}.out').read().strip().splitlines()[-1])
        r = j.get('decode_repetitions') or {}
        tl = j.get('decode_graph_timeline') or {}
        print('dec', f, round(j['decode_tokens_per_s'], 2), 'samples', [round(x, 1) for x in r.get('samples', [])], 'bound', round(j.get('decode_bound_fraction') or 0, 3), 'dram', round(j['dram_gbps'], 1), 'experts_ms', round(tl.get('experts_per_moe_layer_ms') or 0, 4), 'between', round(tl.get('gpu_between_moe_ms') or 0, 4), 'prefill_tps', round(j.get('prefill_tokens_per_s') or 0, 1))
    except Exception as e: print('dec', f, 'error', e)
PY
rm -f $G
log done
