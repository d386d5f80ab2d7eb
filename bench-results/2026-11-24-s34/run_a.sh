#!/usr/bin/env bash
# Session 34 call A: expert deferral (`defer_experts`). The GPU tests the change reaches
# (hybrid_graph with the new deferral test, hybrid_pipeline, hybrid_forward), then the synthetic
# V2-Lite (27 layers) decode with the shipped hybrid rules, --defer-experts 0 / 2 / 1 / 3 / 0,
# processes taking turns.
set -uo pipefail
E=$OUT/a; mkdir -p $E; trap 'cd $OUT && tar czf a.tgz a && rm -rf a' EXIT
N=/tmp/kt-a; mkdir -p $N; tar xJf .device-carry/s34/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s34/COMMIT)"
export KT_REQUIRE_GPU=1
for t in hybrid_graph hybrid_pipeline hybrid_forward; do
  timeout 200 $N/$t --test-threads 2 --nocapture > $E/test_$t.log 2>&1; log "test $t rc $? $(grep -o 'test result.*' $E/test_$t.log)"
done
grep "deferral moved\|RMS difference" $E/test_hybrid_graph.log | tee -a $E/summary.txt
unset KT_REQUIRE_GPU
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction_paired":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"deferred_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"moe_layer_bound_fraction_around":[0-9.]*\|"routed_bandwidth_fraction_around":[0-9.]*\|"samples":[^]]*'
dec() { # tag rules [extra args]
  local tag=$1 rules=$2; shift 2; local s0=$SECONDS
  timeout 150 $N/kt-bench decode --model $G --rules rules/$rules "$@" --prompt-len 1024 --gen-len 128 \
    --threads 16 --json --repetitions 3 > $E/dec_$tag.out 2> $E/dec_$tag.err
  log "decode $tag rc $? wall $((SECONDS-s0))s $(grep -o "$J" $E/dec_$tag.out | tr '\n' ' ')"
}
G=/tmp/v2l.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen_v2l.log 2>&1; log "gen v2l rc $? $(tail -1 $E/gen_v2l.log)"
dec d0 deepseek-v2-lite-hybrid.yaml --defer-experts 0
dec d2 deepseek-v2-lite-hybrid.yaml --defer-experts 2
dec d1 deepseek-v2-lite-hybrid.yaml --defer-experts 1
dec d3 deepseek-v2-lite-hybrid.yaml --defer-experts 3
[ $((SECONDS-t0)) -lt 500 ] && dec d0b deepseek-v2-lite-hybrid.yaml --defer-experts 0
rm -f $G
log done
