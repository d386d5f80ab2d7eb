#!/usr/bin/env bash
# Session 13 call C: prefetch rounds (.device-carry/s13c, 2 rounds default) vs session 12's final kt-bench (aa575b7,
# .device-carry/s13base). V2-Lite 27 layers hybrid decode: in-process A/B of 1/2/3 rounds and off, whole
# processes base/new interleaved x2 with --repetitions 5, llama.cpp tg128 -r 5 before and after; MoE T=1
# standalone (own rounds without a prefetch) new/base; the GPU hybrid tests and CPU moe/pool tests.
set -uo pipefail
E=$OUT/c; mkdir -p $E/tests; trap 'cd $OUT && tar czf c.tgz c && rm -rf c' EXIT
D=.device-carry/s13c; B=/tmp/kt-bin; mkdir -p $B && tar xJf $D/bin.tar.xz -C $B
xz -dc .device-carry/s13base/kt-bench.xz > $B/kt-bench-base; chmod +x $B/kt-bench-base
xz -dc $D/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/llamacpp-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $D/COMMIT)"
G=/tmp/v2l.gguf
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
dec() { # tag exe [env]
  env ${3:-} timeout 100 $2 decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 5 \
    > $E/dec_$1.out 2> $E/dec_$1.err; log "dec $1 rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"prefetch_us":[0-9.]*\|"prefetch_mb":[0-9.]*' $E/dec_$1.out | tr '\n' ' ')"; }
ll() { timeout 50 $B/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 5 > $E/llama$1.out 2> $E/llama$1.err; log "llama$1 rc $? $(grep -o '"avg_ts":[0-9.]*' $E/llama$1.out | tr '\n' ' ')"; }
ll 1
dec ab $B/kt-bench KT_PREFETCH_AB=4:2,off,1
dec base_1 $B/kt-bench-base; dec new_1 $B/kt-bench; dec new_2 $B/kt-bench; dec base_2 $B/kt-bench-base
[ $((SECONDS-t0)) -lt 250 ] && dec new_3 $B/kt-bench
[ $((SECONDS-t0)) -lt 280 ] && ll 2
rm -f $G
m() { local label=$1 exe=$2; shift 2
  timeout 40 "$exe" moe "$@" --threads 16 --json --cpu-time 2>>$E/moe_err.txt | sed "s/^{/{\"bin\":\"$label\",/" >> $E/moe.jsonl; log "moe $label $* rc ${PIPESTATUS[0]} $(tail -1 $E/moe.jsonl | grep -o '"ms_per_call":[0-9.]*')"; }
for b in base new new base; do [ $((SECONDS-t0)) -gt 380 ] && continue
  exe=$B/kt-bench; [ $b = base ] && exe=$B/kt-bench-base
  m $b $exe --shape deepseek-v2-lite --format q4_k --tokens 1 --seconds 0.5
  m $b $exe --shape deepseek-v3 --format q4_k --tokens 1 --seconds 0.5
done
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures KT_REQUIRE_GPU=1
for t in $B/tests/*; do n=$(basename $t); [ $((SECONDS-t0)) -gt 450 ] && { log "tests stop at $n"; break; }
  timeout 60 $t --test-threads 4 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
python3 - $E <<'PY' | tee $E/table.txt
import json, sys
E = sys.argv[1]
try:
    j = json.loads(open(f'{E}/dec_ab.out').read().strip().splitlines()[-1])
    for r in j.get('prefetch_ab', []):
        tl = r.get('decode_graph_timeline') or {}
        print('ab', r.get('prefetch_rounds'), round(r['decode_tokens_per_s'], 2), 'experts_ms', round(tl.get('experts_per_moe_layer_ms') or 0, 4), 'between', round(tl.get('gpu_between_moe_ms') or 0, 4), 'pf_us', round(tl.get('prefetch_us') or 0, 1), 'pf_mb', round(tl.get('prefetch_mb') or 0, 2), 'hit', tl.get('predicted_hit_rate'))
except Exception as e: print('ab error', e)
PY
log done
