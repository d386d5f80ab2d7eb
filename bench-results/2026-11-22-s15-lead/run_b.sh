#!/usr/bin/env bash
# Session 15 call B (issue 2 on the device, main at COMMIT): the CPU kernel test binaries (every ISA the Xeon has),
# then kt-bench matmul and ggml's ggml_mul_mat (kt-bench/peers/ggml_matmul, llama.cpp's vendored ggml built with
# AVX512/VNNI/BF16) side by side on every format x shape x tokens {1, 512}, 16 threads, one process per side.
set -uo pipefail
E=$OUT/b; mkdir -p $E/tests; trap 'cd $OUT && tar czf b.tgz b && rm -rf b' EXIT
B=/tmp/kt-bin; mkdir -p $B && tar xJf .device-carry/s15b/bin.tar.xz -C $B
xz -dc .device-carry/s15peers/ggml_matmul.xz > $B/ggml_matmul; chmod +x $B/ggml_matmul
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s15b/COMMIT)"
lscpu > $E/lscpu.txt 2>&1
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures
for n in lib_kt_kernels cpu_amx_gemm cpu_avx2_kernels cpu_avx512_kernels matmul_backends matmul_no_alloc ggml_order_dots quant_fixtures_kquants quant_fixtures_small ops_fixtures; do
  [ $((SECONDS-t0)) -gt 200 ] && { log "tests stop at $n"; break; }
  timeout 60 $B/tests/$n --test-threads 16 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
$B/kt-bench machine --threads 16 --json > $E/machine.json 2>&1; log "machine $(cat $E/machine.json | head -c 400)"
F="q4_K q5_K q2_K q6_K q8_0 bf16"; S="2048x7168 7168x2048 1408x2048 2048x1408 18432x7168"
: > $E/matmul.jsonl
for f in $F; do
  timeout 120 $B/kt-bench matmul --threads 16 --formats $f --shapes ${S// /,} --tokens 1,512 --seconds 0.3 --json >> $E/matmul.jsonl 2>>$E/errors.txt
  log "kt $f rc $?"
  for s in $S; do for t in 1 512; do
    case "$f:$s" in q[2-6]_K:*x1408) continue;; esac
    [ $((SECONDS-t0)) -gt 540 ] && continue
    timeout 30 $B/ggml_matmul $f $s $t 16 0.3 >> $E/matmul.jsonl 2>>$E/errors.txt
  done; done
  log "ggml $f"
done
python3 - $E/matmul.jsonl <<'PY' | tee $E/table.txt
import json, sys
rows = []
for l in open(sys.argv[1]):
    try: rows.append(json.loads(l))
    except Exception: pass
rows = [r for r in rows if "skipped" not in r]
kt = {(r["format"].lower(), r["rows"], r["cols"], r["tokens"]): r for r in rows if "peer" not in r}
gg = {(r["format"].lower(), r["rows"], r["cols"], r["tokens"]): r for r in rows if "peer" in r}
print(f"{'format':6} {'shape':>11} {'tok':>4} {'isa':>7} {'kt ms':>9} {'ggml ms':>9} {'ggml/kt':>7} {'kt GB/s':>8} {'of bw':>6} {'kt GOP/s':>9} {'of pk':>6}")
for k, r in kt.items():
    g = gg.get(k)
    print(f"{k[0]:6} {str(k[1])+'x'+str(k[2]):>11} {k[3]:>4} {r.get('isa',''):>7} {r['ms_per_call']:9.4f} {g['ms_per_call'] if g else float('nan'):9.4f} "
          f"{(g['ms_per_call']/r['ms_per_call']) if g else float('nan'):7.2f} {r['weight_gbps']:8.1f} {100*(r.get('bandwidth_fraction') or 0):5.0f}% "
          f"{r['gops']:9.1f} {100*(r.get('peak_fraction') or 0):5.1f}%")
PY
log done
