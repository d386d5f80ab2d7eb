#!/usr/bin/env bash
# Session 15 call C (main at COMMIT): 1) the read probe over 1 GiB, 16 x LLC and 8 GiB; 2) issue 2's one-token GEMVs,
# kt-bench matmul and ggml's ggml_mul_mat side by side, both cycling through 16 x LLC of copies; 3) issue 4's MoE
# targets (kt-bench moe) and kt-kernel 0.7.2 (bench_moe.py, AMX INT4 and llamafile Q4_K, 15 threads) in the same call;
# 4) MoE test binaries.
set -uo pipefail
E=$OUT/c; mkdir -p $E/tests $E/ktk; trap 'cd $OUT && tar czf c.tgz c && rm -rf c' EXIT
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s15c/bin.tar.xz -C $B
xz -dc .device-carry/s15peers/ggml_matmul.xz > $B/ggml_matmul; chmod +x $B/ggml_matmul
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s15c/COMMIT)"
$B/kt-bench machine --threads 16 --json --probe-bytes 1073741824,cycle,8589934592,1073741824 > $E/machine.json 2>&1; log "machine $(cat $E/machine.json)"
CYC=$(python3 -c "import json; print(json.load(open('$E/machine.json'))['probes'][1]['bytes'])")
F="q4_K q5_K q2_K q6_K q8_0 bf16"; S="2048x7168 7168x2048 1408x2048 2048x1408 18432x7168"
: > $E/gemv.jsonl
for f in $F; do
  timeout 150 $B/kt-bench matmul --threads 16 --formats $f --shapes ${S// /,} --tokens 1 --seconds 0.3 --json >> $E/gemv.jsonl 2>>$E/errors.txt
  log "kt $f rc $?"
  for s in $S; do
    case "$f:$s" in q[2-6]_K:*x1408) continue;; esac
    [ $((SECONDS-t0)) -gt 260 ] && continue
    timeout 30 $B/ggml_matmul $f $s 1 16 0.3 $CYC >> $E/gemv.jsonl 2>>$E/errors.txt
  done
  log "ggml $f"
done
m() { timeout 60 $B/kt-bench moe "$@" --threads 16 --json 2>>$E/moe_err.txt >> $E/moe.jsonl; log "moe $* rc $?"; }
m --shape deepseek-v3 --format q4_k --tokens 1 --seconds 1
m --shape deepseek-v2-lite --format q4_k --tokens 1 --seconds 1
m --shape deepseek-v3 --format q4_k --tokens 512 --seconds 1
m --shape deepseek-v3 --format int4 --group 128 --tokens 512 --seconds 1
m --shape deepseek-v2-lite --format int4 --group 128 --tokens 512 --seconds 1
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for n in moe_correctness moe_q4k_amx moe_repacked_moe moe_api; do
  timeout 60 $B/tests/$n --test-threads 16 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
left=$((560 - (SECONDS - t0)))
if [ $left -gt 60 ]; then mkdir -p /tmp/anch && tar xJf .device-carry/s15peers/ktk.tar.xz -C /tmp/anch
  timeout $left python3 .device-carry/s15peers/bench_moe.py --ktk-dir /tmp/anch/ktk --out-dir $E/ktk --threads 15 \
   --methods amx_int4,llamafile_q4k --qlens 512,1 --extra-runs "" --min-time-s 0.3 --deadline-s $((left - 15)) --bw-gib 2 \
   > $E/ktk/stdout.txt 2> $E/ktk/stderr.txt; log "ktk rc $?"; tail -15 $E/ktk/stdout.txt
fi
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
    print('gemv', k[0], f'{k[1]}x{k[2]}', '%.4f ms' % r['ms_per_call'], 'ggml %.4f' % g['ms_per_call'] if g else 'ggml -', 'ggml/kt %.2f' % (g['ms_per_call'] / r['ms_per_call']) if g else '', '%.1f GB/s' % r['weight_gbps'], '%.0f%% of %.1f' % (100 * r['bandwidth_fraction'], r['dram_gbps']), 'cycled %.2f GB' % (r.get('cycled_bytes', 0) / 1e9))
for l in open(E + '/moe.jsonl'):
    r = json.loads(l)
    print('moe', r['shape'], r['gate'], r['down'], 'T=%d' % r['tokens'], r['isa'], '%.3f ms' % r['ms_per_call'], 'w %.1f GB/s' % r['weight_gbps'], 'dram %.1f' % r['dram_gbps'], 'bwfrac %.3f' % r['bandwidth_fraction'], 'peakfrac %.3f' % r['peak_fraction'])
PY
log done
