#!/usr/bin/env bash
# Session 26 call D (main at COMMIT: the repack's INT4 search on AVX512 and cpu::dequantize on the load paths; base =
# BASE, session 25's last code): tests (AVX512/AMX, GPU), then DeepSeek-V2-Lite (27 layers) loads and runs, new and
# base binaries taking turns in separate processes: routed experts as stored (rules/deepseek-v2-lite-hybrid.yaml),
# repacked to int4 for the CPU (rules/cpu-int4/...), and the GPU prefill experts (rules/gpu-prefill/...).
set -uo pipefail
E=$OUT/d; mkdir -p $E; trap 'cd $OUT && tar czf d.tgz d && rm -rf d' EXIT
C=.device-carry/s26d; B=/tmp/kt-bin; mkdir -p $B && tar xJf $C/bin.tar.xz -C $B
xz -dc $C/kt-bench.xz > $B/kt-bench; xz -dc $C/kt-bench-base.xz > $B/kt-bench-base; chmod +x $B/kt-bench $B/kt-bench-base
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); new $(cat $C/COMMIT) base $(cat $C/BASE)"
for t in kt_kernels_lib; do
  timeout 120 $B/tests/$t > $E/test_$t.txt 2>&1; log "test $t rc $? $(grep 'test result' $E/test_$t.txt | tail -1)"
done
for t in hybrid_forward hybrid_prefill; do
  KT_REQUIRE_GPU=1 timeout 150 $B/tests/$t > $E/test_$t.txt 2>&1; log "test $t rc $? $(grep 'test result' $E/test_$t.txt | tail -1)"
done
G=/tmp/v2l.gguf
timeout 90 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
J='"gpu_load_s":[0-9.]*\|"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"prefill_tokens_per_s":[0-9.]*\|"repack_s":[0-9.]*\|"pin_s":[0-9.]*'
dec() { # binary tag rules
  [ $((SECONDS-t0)) -gt 480 ] && { log "skip dec $2"; return; }
  /usr/bin/time -f "%e s %M KB" -o $E/dec_$2.time timeout 150 $B/$1 decode --model $G --rules $3 \
    --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 3 > $E/dec_$2.out 2> $E/dec_$2.err
  log "dec $2 rc $? $(grep -o "$J" $E/dec_$2.out | head -6 | tr '\n' ' ') $(cat $E/dec_$2.time)"
}
pre() {
  [ $((SECONDS-t0)) -gt 510 ] && { log "skip pre $2"; return; }
  /usr/bin/time -f "%e s %M KB" -o $E/pre_$2.time timeout 120 $B/$1 prefill --model $G --rules rules/gpu-prefill/deepseek-v2-lite-hybrid.yaml \
    --prompt-len 1024 --threads 16 --json > $E/pre_$2.out 2> $E/pre_$2.err
  log "pre $2 rc $? $(grep -o "$J" $E/pre_$2.out | head -6 | tr '\n' ' ') $(cat $E/pre_$2.time)"
}
I4=rules/cpu-int4/deepseek-v2-lite-hybrid.yaml; GG=rules/deepseek-v2-lite-hybrid.yaml
dec kt-bench int4_new1 $I4
dec kt-bench-base int4_base1 $I4
dec kt-bench gguf_new1 $GG
dec kt-bench-base gguf_base1 $GG
pre kt-bench new1
pre kt-bench-base base1
dec kt-bench int4_new2 $I4
rm -f $G
log done
