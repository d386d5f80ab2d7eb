#!/usr/bin/env bash
# Session 19 call M: the final code (COMMIT = 73e5c86, s19h, --features cuda): every GPU and hybrid test binary and the
# CPU / AVX512 / AMX / MoE ones; then the V2-Lite hybrid decode once (prompt 1024, gen 128).
set -uo pipefail
E=$OUT/m; mkdir -p $E/tests; trap 'cd $OUT && tar czf m.tgz m && rm -rf m' EXIT
B=/tmp/s19h; mkdir -p $B && tar xJf .device-carry/s19h/bin.tar.xz -C $B
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s19h/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures KT_REQUIRE_GPU=1
for n in $(ls $B/tests); do
  timeout 150 $B/tests/$n --test-threads 16 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
grep -h -E "FAILED|panicked" $E/tests/*.txt | head -20
unset KT_REQUIRE_GPU
G=/tmp/v2l.gguf
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
timeout 60 $B/kt-bench decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 5 > $E/dec.out 2> $E/dec.err
log "dec rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*' $E/dec.out | head -3 | tr '\n' ' ')"
log done
