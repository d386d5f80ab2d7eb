#!/usr/bin/env bash
# Session 28 calls E1 / E2 (COMMIT: prefill_resident as a rule option, the V3 int4 GPU-prefill rules): `run_e.sh 4`
# runs the device tests and the 4-layer V3 file, `run_e.sh 6` the 6-layer one: llama.cpp pp1024, then kt's GPU prefill
# (1024 tokens, 16 threads, separate processes) with the V3 GPU-prefill rules as shipped (43 resident, split off), those
# with a CPU share of 0.15, and the int4 rules (CPU experts repacked to int4, 43 resident) with shares 0.25 and 0.35.
set -uo pipefail
L=$1; E=$OUT/e$L; mkdir -p $E; trap "cd $OUT && tar czf e$L.tgz e$L && rm -rf e$L" EXIT
C=.device-carry/s28e; B=/tmp/kt-bin; mkdir -p $B && tar xJf $C/bin.tar.xz -C $B
xz -dc $C/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $C/COMMIT | tr '\n' ' ')"
J='"operator_s":[0-9.]*\|"prefill_tokens_per_s":[0-9.]*\|"split":[^,{]*\|"resident_experts":[0-9]*\|"copy_ms":[0-9.]*'
pre() { # tag rules split
  [ $((SECONDS-t0)) -gt 500 ] && { log "skip $1"; return; }
  timeout 150 $B/kt-bench prefill --model /tmp/v3_$L.gguf --rules rules/gpu-prefill/$2.yaml --prompt-len 1024 \
    --threads 16 --json --prefill-split $3 > $E/pre_$1.out 2> $E/pre_$1.err
  log "prefill $L $2 split $3 rc $? $(grep -o "$J" $E/pre_$1.out | tr '\n' ' ')"
}
if [ "$L" = 4 ]; then
  for t in cuda_pinned hybrid_prefill hybrid_forward; do
    KT_REQUIRE_GPU=1 timeout 150 $B/$t --nocapture > $E/test_$t.txt 2>&1; log "test $t rc $? $(grep 'test result' $E/test_$t.txt | tail -1)"
  done
  grep -h "repacked" $E/test_hybrid_prefill.txt | head -3
fi
timeout 120 $B/kt-bench gen-gguf --preset deepseek-v3 --layers $L --out /tmp/v3_$L.gguf --threads 16 > $E/gen.log 2>&1; log "gen rc $? $(tail -1 $E/gen.log)"
timeout 100 $B/llamacpp-bench -m /tmp/v3_$L.gguf -p 1024 -n 0 -t 16 -r 3 > $E/llama.out 2> $E/llama.err
log "llama $L rc $? $(grep -o '"test":"[a-z0-9]*"\|"avg_ts":[0-9.]*' $E/llama.out | tr '\n' ' ')"
pre a deepseek-v3-hybrid off; pre b deepseek-v3-hybrid 0.15; pre c deepseek-v3-hybrid-int4 0.25; pre d deepseek-v3-hybrid-int4 0.35
rm -f /tmp/v3_$L.gguf
log done
