#!/usr/bin/env bash
# Session 14 call E: main at COMMIT (70ce4e4: the device lock, committed; hybrid_graph without phase prints) vs
# session 13's final (2ec1f43). 1) the hybrid test binaries once; 2) hybrid_graph, 45 s limit, until 100 s;
# 3) V2-Lite 27-layer decode base/new/new/base/base/new (--repetitions 5), llama.cpp tg128 -r 5 before and after;
# 4) the in-process prefetch A/B (2 rounds / off, x3) for the first MoE layer's experts against the mean.
set -uo pipefail
E=$OUT/e; mkdir -p $E/tests $E/hang; trap 'cd $OUT && tar czf e.tgz e && rm -rf e' EXIT
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s14e/bin.tar.xz -C $B
xz -dc .device-carry/s13prev/kt-bench.xz > $B/kt-bench-base; chmod +x $B/kt-bench-base
xz -dc .device-carry/s13f/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/llamacpp-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s14e/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures KT_REQUIRE_GPU=1
for t in $B/tests/hybrid_*; do n=$(basename $t)
  timeout 120 $t > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
one() { # tag
  local out=$E/hang/$1.txt
  $B/tests/hybrid_graph --nocapture > $out 2>&1 & local pid=$!
  for i in $(seq 1 450); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
  if kill -0 $pid 2>/dev/null; then
    log "$1 HANG"
    for t in /proc/$pid/task/*; do
      echo "== $t $(cat $t/comm) $(cut -d' ' -f3 $t/stat) wchan=$(cat $t/wchan 2>/dev/null) syscall=$(cat $t/syscall 2>/dev/null)"
      cat $t/stack 2>/dev/null | head -12
    done > $E/hang/$1.proc
    cat /proc/$pid/maps > $E/hang/$1.maps
    nvidia-smi > $E/hang/$1.smi 2>&1
    kill -9 $pid; wait $pid 2>/dev/null
  else wait $pid; log "$1 rc $? $(grep -E '^test result' $out | tail -1)"; grep -v '^PH' $out > $out.tmp; mv $out.tmp $out; fi
}
h0=$SECONDS; r=0
while [ $((SECONDS-h0)) -lt 100 ]; do r=$((r+1)); one r$r; done
log "hang loop: $(grep -c '^r[0-9]* rc 0' $E/summary.txt) ok $(grep -c 'HANG' $E/summary.txt) hung $(grep -c '^r[0-9]* rc [1-9]' $E/summary.txt) failed"
unset KT_REQUIRE_GPU
G=/tmp/v2l.gguf
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
dec() { # tag exe [env]
  env ${3:-} timeout 150 $2 decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 5 \
    > $E/dec_$1.out 2> $E/dec_$1.err; log "dec $1 rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*' $E/dec_$1.out | head -3 | tr '\n' ' ')"; }
ll() { timeout 50 $B/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 5 > $E/llama$1.out 2> $E/llama$1.err; log "llama$1 rc $? $(grep -o '"avg_ts":[0-9.]*' $E/llama$1.out | tr '\n' ' ')"; }
ll 1
dec base_1 $B/kt-bench-base; dec new_1 $B/kt-bench; dec new_2 $B/kt-bench; dec base_2 $B/kt-bench-base; dec base_3 $B/kt-bench-base; dec new_3 $B/kt-bench
ll 2
dec ab $B/kt-bench KT_PREFETCH_AB=3:2,off
python3 - $E <<'PY' | tee $E/table.txt
import json, sys
E = sys.argv[1]
try:
    j = json.loads(open(f'{E}/dec_ab.out').read().strip().splitlines()[-1])
    for r in j.get('prefetch_ab', []):
        tl = r.get('decode_graph_timeline') or {}
        print('ab', r.get('prefetch_rounds'), round(r['decode_tokens_per_s'], 2), 'experts_ms', round(tl.get('experts_per_moe_layer_ms') or 0, 4), 'first', round(tl.get('first_moe_layer_experts_ms') or 0, 4), 'between', round(tl.get('gpu_between_moe_ms') or 0, 4), 'pf_us', round(tl.get('prefetch_us') or 0, 1))
except Exception as e: print('ab error', e)
for f in ('base_1', 'new_1', 'new_2', 'base_2', 'base_3', 'new_3', 'ab'):
    try:
        j = json.loads(open(f'{E}/dec_{f}.out').read().strip().splitlines()[-1])
        r = j.get('decode_repetitions') or {}
        tl = j.get('decode_graph_timeline') or {}
        print('dec', f, round(j['decode_tokens_per_s'], 2), 'samples', [round(x, 1) for x in r.get('samples', [])], 'bound', round(j.get('decode_bound_fraction') or 0, 3), 'dram', round(j['dram_gbps'], 1), 'experts_ms', round(tl.get('experts_per_moe_layer_ms') or 0, 4), 'between', round(tl.get('gpu_between_moe_ms') or 0, 4), 'first', round(tl.get('first_moe_layer_experts_ms') or 0, 4), 'prefill_tps', round(j.get('prefill_tokens_per_s') or 0, 1))
    except Exception as e: print('dec', f, 'error', e)
PY
rm -f $G
log done
