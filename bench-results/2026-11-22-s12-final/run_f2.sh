#!/usr/bin/env bash
# Session 12 final call 2: main at COMMIT (all session-12 merges) vs the session start (s12base, 54a8a0b).
# Part B (engine): one V2-Lite GGUF, two decode pairs (new with --repetitions 5), llama.cpp tg128 -r 5 before and
# after. Part A (CPU): issue 4's MoE targets (new/base rotating x3), T=1 shapes, GEMM 512 / GEMV 1 token,
# the CPU test binaries, kt-kernel 0.7.2.
set -uo pipefail
E=$OUT/f2; mkdir -p $E/tests $E/ktk; trap 'cd $OUT && tar czf f2.tgz f2 && rm -rf f2' EXIT
D=.device-carry/s12f2; B=/tmp/kt-bin; mkdir -p $B && tar xJf $D/bin.tar.xz -C $B
xz -dc .device-carry/s12base/kt-bench.xz > $B/kt-bench-base; chmod +x $B/kt-bench-base
xz -dc $D/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/llamacpp-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $D/COMMIT)"
G=/tmp/v2l.gguf
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
dec() { # tag exe [env]
  env ${3:-} timeout 100 $2 decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json ${4:-} \
    > $E/dec_$1.out 2> $E/dec_$1.err; log "dec $1 rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"samples":[^]]*' $E/dec_$1.out | tr '\n' ' ')"; }
ll() { timeout 50 $B/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 5 > $E/llama$1.out 2> $E/llama$1.err; log "llama$1 rc $? $(grep -o '"avg_ts":[0-9.]*' $E/llama$1.out | tr '\n' ' ')"; }
ll 1; dec base_1 $B/kt-bench-base; dec new_1 $B/kt-bench "" "--repetitions 5"; dec new_2 $B/kt-bench "" "--repetitions 5"; dec base_2 $B/kt-bench-base
[ $((SECONDS-t0)) -lt 220 ] && ll 2
rm -f $G
m() { local label=$1 exe=$2; shift 2
  timeout 40 "$exe" moe "$@" --threads 16 --json --cpu-time 2>>$E/moe_err.txt | sed "s/^{/{\"bin\":\"$label\",/" >> $E/moe.jsonl; log "moe $label $* rc ${PIPESTATUS[0]}"; }
exe() { case $1 in base) echo $B/kt-bench-base;; *) echo $B/kt-bench;; esac; }
for order in "new base" "base new" "new base"; do for b in $order; do [ $((SECONDS-t0)) -gt 300 ] && continue
  m $b $(exe $b) --shape deepseek-v3 --format q4_k --tokens 512 --seconds 0.5
  m $b $(exe $b) --shape deepseek-v2-lite --format int4 --group 128 --tokens 512 --seconds 0.5
done; done
for b in new base; do [ $((SECONDS-t0)) -gt 320 ] && continue
  m $b $(exe $b) --shape deepseek-v3 --format q4_k --tokens 1 --seconds 0.5
  m $b $(exe $b) --shape deepseek-v2-lite --format q4_k --tokens 1 --seconds 0.5
  m $b $(exe $b) --shape deepseek-v3 --format int4 --group 128 --tokens 512 --seconds 0.5
done
mm() { local label=$1 tag=$2; shift 2
  timeout 30 $(exe $label) matmul "$@" --threads 16 --json 2>>$E/mm_err.txt | sed "s/^{/{\"bin\":\"$label\",/" >> $E/$tag.jsonl; log "matmul $tag $label rc ${PIPESTATUS[0]}"; }
for v in new base; do [ $((SECONDS-t0)) -gt 345 ] && continue
  mm $v t512 --tokens 512 --formats q4_k,q6_k --shapes 7168x2048,2048x7168,1408x2048,18432x7168 --seconds 0.2
  mm $v t1 --tokens 1 --formats q4_k,q5_k,q6_k,q2_k --shapes 1408x2048,7168x2048 --seconds 0.2
done
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for t in $B/tests/*; do n=$(basename $t); [ $((SECONDS-t0)) -gt 410 ] && { log "tests stop at $n"; break; }
  timeout 50 $t --test-threads 16 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
left=$((520 - (SECONDS - t0)))
if [ $left -gt 45 ]; then mkdir -p /tmp/anch && tar xJf .device-carry/s11anch/ktk.tar.xz -C /tmp/anch
  timeout $left python3 .device-carry/s11anch/bench_moe.py --ktk-dir /tmp/anch/ktk --out-dir $E/ktk --threads 15 \
   --methods amx_int4,llamafile_q4k --qlens 512,1 --extra-runs "" --min-time-s 0.3 --deadline-s $((left - 10)) --bw-gib 2 \
   > $E/ktk/stdout.txt 2> $E/ktk/stderr.txt; log "ktk rc $?"; tail -12 $E/ktk/stdout.txt
fi
python3 - $E <<'PY' | tee $E/table.txt
import json, sys
E = sys.argv[1]
for l in open(E + '/moe.jsonl'):
    r = json.loads(l)
    print('moe', r['bin'], r['shape'], r['isa'], 'T=%d' % r['tokens'], '%.3f ms' % r['ms_per_call'], 'dram %.1f' % r['dram_gbps'], 'wgbps %.1f' % r.get('weight_gbps', 0))
for f in ('t512', 't1'):
    try:
        for l in open(f'{E}/{f}.jsonl'):
            j = json.loads(l)
            if 'skipped' in j: continue
            print(f, j['bin'], j['format'], f"{j['rows']}x{j['cols']}", j['isa'], round(j['ms_per_call'], 4), 'peak_frac', round(j.get('peak_fraction') or 0, 3), 'bw_frac', round(j.get('bandwidth_fraction') or 0, 3))
    except Exception as e: print(f, 'error', e)
for f in ('new_1', 'new_2'):
    try:
        j = json.loads(open(f'{E}/dec_{f}.out').read().strip().splitlines()[-1])
        for r in j.get('prefetch_ab', []):
            tl = r.get('decode_graph_timeline') or {}
            print('prefetch_ab', f, 'on' if r['prefetch'] else 'off', round(r['decode_tokens_per_s'], 2), 'bound', round(tl.get('decode_bound_fraction') or 0, 3) if isinstance(tl, dict) else '')
    except Exception as e: print('prefetch_ab', f, 'error', e)
PY
log done
