#!/usr/bin/env bash
# Session 15 call A: the MoE decode job's last expert in shorter down items (MoeContext::set_tail_rows), A/B in
# process: 1) moe_api, kt-kernels lib, hybrid_graph; 2) kt-bench moe T=1 V2-Lite / V3 with --tail-rows 0,32,64
# (one call each in turn); 3) V2-Lite 27-layer decode: llama.cpp tg128, base (df4a5d3), new with
# KT_PREFETCH_AB=3:2,2t32,2t64 (in-process), new with KT_MOE_TAIL_ROWS=32, llama.cpp again; /proc/stat steal
# around each decode process.
set -uo pipefail
E=$OUT/a; mkdir -p $E/tests; trap 'cd $OUT && tar czf a.tgz a && rm -rf a' EXIT
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s15a/bin.tar.xz -C $B
xz -dc .device-carry/s15base/kt-bench.xz > $B/kt-bench-base; chmod +x $B/kt-bench-base
xz -dc .device-carry/s13f/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/llamacpp-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
steal() { awk '/^cpu /{print "steal_jiffies", $9, "total", $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s15a/COMMIT); $(steal)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures KT_REQUIRE_GPU=1
for n in moe_api lib_kt_kernels hybrid_graph; do
  timeout 90 $B/tests/$n --test-threads 16 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
unset KT_REQUIRE_GPU
m() { # tag args...
  local tag=$1; shift
  timeout 60 $B/kt-bench moe "$@" --threads 16 --json > $E/moe_$tag.jsonl 2> $E/moe_$tag.err; log "moe $tag rc $? $(python3 -c "
import json,sys
for l in open('$E/moe_$tag.jsonl'):
    j=json.loads(l); print('t%s %.4fms %.1fGB/s' % (j.get('tail_rows'), j['ms_per_call'], j['weight_gbps']), end=' ')
print('dram %.1f' % j['dram_gbps'])" 2>&1)"; }
m v2l_1 --shape deepseek-v2-lite --format q4_k --tokens 1 --tail-rows 0,32,64 --seconds 3
m v2l_2 --shape deepseek-v2-lite --format q4_k --tokens 1 --tail-rows 64,32,0 --seconds 3
m v3_1 --shape deepseek-v3 --format q4_k --tokens 1 --tail-rows 0,32 --seconds 3
G=/tmp/v2l.gguf
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
dec() { # tag exe [env]
  local s0=$(steal)
  env ${3:-} timeout 150 $2 decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 5 \
    > $E/dec_$1.out 2> $E/dec_$1.err; log "dec $1 rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*' $E/dec_$1.out | head -3 | tr '\n' ' ') steal before: $s0 after: $(steal)"; }
ll() { timeout 50 $B/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 5 > $E/llama$1.out 2> $E/llama$1.err; log "llama$1 rc $? $(grep -o '"avg_ts":[0-9.]*' $E/llama$1.out | tr '\n' ' ')"; }
ll 1
dec base_1 $B/kt-bench-base
dec ab $B/kt-bench KT_PREFETCH_AB=3:2,2t32,2t64
dec t32 $B/kt-bench KT_MOE_TAIL_ROWS=32
[ $((SECONDS-t0)) -lt 480 ] && ll 2
[ $((SECONDS-t0)) -lt 470 ] && dec new_1 $B/kt-bench
python3 - $E <<'PY' | tee $E/table.txt
import json, sys
E = sys.argv[1]
def tl_str(tl):
    return 'experts_ms %.4f p50 %s between %.4f first %.4f pf_us %.1f' % (tl.get('experts_per_moe_layer_ms') or 0, (tl.get('experts_quantiles_ms') or [0,0])[1], tl.get('gpu_between_moe_ms') or 0, tl.get('first_moe_layer_experts_ms') or 0, tl.get('prefetch_us') or 0)
try:
    j = json.loads(open(f'{E}/dec_ab.out').read().strip().splitlines()[-1])
    for r in j.get('prefetch_ab', []):
        print('ab', r.get('prefetch_rounds'), 't', r.get('moe_tail_rows'), round(r['decode_tokens_per_s'], 2), tl_str(r.get('decode_graph_timeline') or {}))
except Exception as e: print('ab error', e)
for f in ('base_1', 'ab', 't32', 'new_1'):
    try:
        j = json.loads(open(f'{E}/dec_{f}.out').read().strip().splitlines()[-1])
        r = j.get('decode_repetitions') or {}
        print('dec', f, round(j['decode_tokens_per_s'], 2), 'samples', [round(x, 1) for x in r.get('samples', [])], 'bound', round(j.get('decode_bound_fraction') or 0, 3), 'dram', round(j['dram_gbps'], 1), tl_str(j.get('decode_graph_timeline') or {}))
    except Exception as e: print('dec', f, 'error', e)
PY
rm -f $G
log done
