#!/usr/bin/env bash
# Session 28 call H (COMMIT: prefill_cpu_share as a rule option): the hybrid GPU-prefill and forward tests on the final
# code, and the 4-layer V3 file's GPU prefill with the V3 GPU-prefill rules as shipped (43 resident, CPU share 0.15 from
# the rules, no flags).
set -uo pipefail
E=$OUT/h; mkdir -p $E; trap "cd $OUT && tar czf h.tgz h && rm -rf h" EXIT
C=.device-carry/s28h; B=/tmp/kt-bin; mkdir -p $B && tar xJf $C/bin.tar.xz -C $B; chmod +x $B/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $C/COMMIT | tr '\n' ' ')"
for t in hybrid_prefill hybrid_forward; do
  KT_REQUIRE_GPU=1 timeout 150 $B/$t > $E/test_$t.txt 2>&1; log "test $t rc $? $(grep 'test result' $E/test_$t.txt | tail -1)"
done
timeout 120 $B/kt-bench gen-gguf --preset deepseek-v3 --layers 4 --out /tmp/v3_4.gguf --threads 16 > $E/gen.log 2>&1; log "gen rc $? $(tail -1 $E/gen.log)"
timeout 150 $B/kt-bench prefill --model /tmp/v3_4.gguf --rules rules/gpu-prefill/deepseek-v3-hybrid.yaml --prompt-len 1024 \
  --threads 16 --json > $E/pre_4.out 2> $E/pre_4.err
log "prefill 4 rc $? $(grep -o '"prefill_tokens_per_s":[0-9.]*\|"split":[^,{]*\|"resident_experts":[0-9]*\|"threshold":[0-9]*' $E/pre_4.out | tr '\n' ' ')"
rm -f /tmp/v3_4.gguf
log done
