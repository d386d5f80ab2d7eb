#!/usr/bin/env bash
# Session 37 call E: the decode after a prefetch with the experts in the prediction's order (2128703).
# GPU tests of the hybrid graph; the hybrid decode (V3 6-layer file, V2-Lite), the experiment build
# with KT_PREFETCH_AB=3:off,34,2 (34 = 2 rounds without the order, 2 = with it; in-process), then the
# final build's decode with 3 repetitions; the V3 one-token layer with --ceiling at the end.
set -uo pipefail
E=$OUT/e; mkdir -p $E; trap 'cd $OUT && tar czf e.tgz e && rm -rf e' EXIT
N=/tmp/kt-e; mkdir -p $N; tar xJf .device-carry/s37e/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s37e/COMMIT)"
timeout 60 $N/kt-bench-s37 machine --threads 16 --json > $E/machine.json 2> $E/machine.err; log "machine rc $? $(cat $E/machine.json)"
for t in hybrid_graph; do
  KT_REQUIRE_GPU=1 timeout 150 $N/$t --test-threads 1 > $E/test_$t.log 2>&1; log "test $t rc $? $(grep -o 'test result.*' $E/test_$t.log)"
done
J='"decode_tokens_per_s":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"moe_layer_bound_fraction_around":[0-9.]*\|"routed_bandwidth_fraction_around":[0-9.]*\|"predicted_hit_rate":[0-9.]*\|"prefetch_mb":[0-9.]*'
dec() { # tag binary rules reps [env]
  local s0=$SECONDS
  env $5 timeout 200 $N/$2 decode --model $G --rules rules/$3 --prompt-len 1024 --gen-len 128 \
    --threads 16 --json --repetitions $4 > $E/dec_$1.out 2> $E/dec_$1.err
  log "decode $1 rc $? wall $((SECONDS-s0))s $(grep -o "$J" $E/dec_$1.out | head -7 | tr '\n' ' ')"
}
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench-s37 gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_v3.log 2>&1; log "gen v3 rc $? $(tail -1 $E/gen_v3.log)"
dec v3_ab kt-bench-x37 deepseek-v3-hybrid.yaml 1 KT_PREFETCH_AB=3:off,34,2
dec v3_a kt-bench-s37 deepseek-v3-hybrid.yaml 3
dec v3_b kt-bench-s37 deepseek-v3-hybrid.yaml 3
rm -f $G
G=/tmp/v2l.gguf
timeout 120 $N/kt-bench-s37 gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen_v2l.log 2>&1; log "gen v2l rc $? $(tail -1 $E/gen_v2l.log)"
dec v2l_ab kt-bench-x37 deepseek-v2-lite-hybrid.yaml 1 KT_PREFETCH_AB=3:off,34,2
dec v2l_a kt-bench-s37 deepseek-v2-lite-hybrid.yaml 3
rm -f $G
[ $((SECONDS-t0)) -lt 420 ] && {
  timeout $((580-(SECONDS-t0))) $N/kt-bench-s37 moe --shape deepseek-v3 --format q4_k --tokens 1 --threads 16 --seconds 8 --ceiling --json > $E/moe_v3.jsonl 2> $E/moe_v3.err
  log "moe v3 rc $?"
}
