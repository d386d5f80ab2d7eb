#!/usr/bin/env bash
# Session 26 call C (main at COMMIT: the INT4 search on AVX512, the GPU-experts progress, --features cuda; base = BASE, session 25's last code): tests (AMX, GPU), then the
# load of DeepSeek-V2-Lite (27 layers) with the routed experts repacked to int4 for the CPU
# (rules/cpu-int4/deepseek-v2-lite-hybrid.yaml) and with the GPU prefill experts (rules/gpu-prefill/...), new and
# base binaries taking turns in separate processes.
set -uo pipefail
E=$OUT/c; mkdir -p $E; trap 'cd $OUT && tar czf c.tgz c && rm -rf c' EXIT
C=.device-carry/s26c; B=/tmp/kt-bin; mkdir -p $B && tar xJf $C/bin.tar.xz -C $B
xz -dc $C/kt-bench.xz > $B/kt-bench; xz -dc $C/kt-bench-base.xz > $B/kt-bench-base; chmod +x $B/kt-bench $B/kt-bench-base
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); new $(cat $C/COMMIT) base $(cat $C/BASE)"
for t in kt_kernels_lib moe_repacked_layouts moe_repacked_moe; do
  timeout 120 $B/tests/$t > $E/test_$t.txt 2>&1; log "test $t rc $? $(grep 'test result' $E/test_$t.txt | tail -1)"
done
for t in hybrid_forward hybrid_prefill; do
  KT_REQUIRE_GPU=1 timeout 150 $B/tests/$t > $E/test_$t.txt 2>&1; log "test $t rc $? $(grep 'test result' $E/test_$t.txt | tail -1)"
done
G=/tmp/v2l.gguf
timeout 90 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
J='"gpu_load_s":[0-9.]*\|"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"prefill_tokens_per_s":[0-9.]*\|"repack_s":[0-9.]*\|"pin_s":[0-9.]*'
dec() { # binary tag
  [ $((SECONDS-t0)) -gt 470 ] && { log "skip dec $2"; return; }
  /usr/bin/time -f "%e s %M KB" -o $E/dec_$2.time timeout 150 $B/$1 decode --model $G --rules rules/cpu-int4/deepseek-v2-lite-hybrid.yaml \
    --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 3 > $E/dec_$2.out 2> $E/dec_$2.err
  log "dec $2 rc $? $(grep -o "$J" $E/dec_$2.out | head -6 | tr '\n' ' ') $(cat $E/dec_$2.time)"
}
pre() {
  [ $((SECONDS-t0)) -gt 500 ] && { log "skip pre $2"; return; }
  /usr/bin/time -f "%e s %M KB" -o $E/pre_$2.time timeout 120 $B/$1 prefill --model $G --rules rules/gpu-prefill/deepseek-v2-lite-hybrid.yaml \
    --prompt-len 1024 --threads 16 --json > $E/pre_$2.out 2> $E/pre_$2.err
  log "pre $2 rc $? $(grep -o "$J" $E/pre_$2.out | head -6 | tr '\n' ' ') $(cat $E/pre_$2.time)"
}
dec kt-bench new1
dec kt-bench-base base1
dec kt-bench new2
pre kt-bench new1
rm -f $G
log done
