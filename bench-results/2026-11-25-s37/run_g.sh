#!/usr/bin/env bash
# Session 37 call G: the prefetch in the prediction's own order (best first) with the call's experts in
# that order (f0ecab2) against session 36's (ascending walk, ascending call), in-process: the experiment
# build (x37b_order_ab.patch over f0ecab2) with KT_PREFETCH_AB=10:34,2 (34 = session 36's way, 2 = the
# new one). Then the final build's decode (3 repetitions) on both files, the GPU test of the graph
# (graph == eager bit for bit with the prefetch on), and the V3 one-token layer with --ceiling if time.
set -uo pipefail
G_=$OUT/g; mkdir -p $G_; trap 'cd $OUT && tar czf g.tgz g && rm -rf g' EXIT
N=/tmp/kt-g; mkdir -p $N; tar xJf .device-carry/s37g/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $G_/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s37g/COMMIT)"
timeout 60 $N/kt-bench-s37 machine --threads 16 --json > $G_/machine.json 2> $G_/machine.err; log "machine rc $?"
KT_REQUIRE_GPU=1 timeout 150 $N/hybrid_graph --test-threads 1 > $G_/test_hybrid_graph.log 2>&1; log "test hybrid_graph rc $? $(grep -o 'test result.*' $G_/test_hybrid_graph.log)"
J='"decode_tokens_per_s":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"moe_layer_bound_fraction_around":[0-9.]*\|"routed_bandwidth_fraction_around":[0-9.]*\|"predicted_hit_rate":[0-9.]*\|"prefetch_mb":[0-9.]*'
dec() { # tag binary rules reps [env]
  local s0=$SECONDS
  env ${5:-} timeout 250 $N/$2 decode --model $G --rules rules/$3 --prompt-len 1024 --gen-len 128 \
    --threads 16 --json --repetitions $4 > $G_/dec_$1.out 2> $G_/dec_$1.err
  log "decode $1 rc $? wall $((SECONDS-s0))s $(grep -o "$J" $G_/dec_$1.out | head -7 | tr '\n' ' ')"
}
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench-s37 gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $G_/gen_v3.log 2>&1; log "gen v3 rc $? $(tail -1 $G_/gen_v3.log)"
dec v3_ab kt-bench-x37 deepseek-v3-hybrid.yaml 1 KT_PREFETCH_AB=10:34,2
dec v3_a kt-bench-s37 deepseek-v3-hybrid.yaml 3
rm -f $G
G=/tmp/v2l.gguf
timeout 120 $N/kt-bench-s37 gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $G_/gen_v2l.log 2>&1; log "gen v2l rc $? $(tail -1 $G_/gen_v2l.log)"
dec v2l_ab kt-bench-x37 deepseek-v2-lite-hybrid.yaml 1 KT_PREFETCH_AB=10:34,2
dec v2l_a kt-bench-s37 deepseek-v2-lite-hybrid.yaml 3
rm -f $G
[ $((SECONDS-t0)) -lt 450 ] && {
  timeout $((585-(SECONDS-t0))) $N/kt-bench-s37 moe --shape deepseek-v3 --format q4_k --tokens 1 --threads 16 --seconds 8 --ceiling --json > $G_/moe_v3.jsonl 2> $G_/moe_v3.err
  log "moe v3 rc $?"
}
