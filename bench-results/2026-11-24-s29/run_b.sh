#!/usr/bin/env bash
# Session 29 call B: the V3 GPU stretch changes (the query LoRA's projections chained as
# programmatic launches, rmsnorm signalling its dependents, the FFN entry's router rows into
# L2, the return staging 32 elements a thread, the mid-k warp-per-4-columns GEMV for the MLA
# expansion, the rope over several blocks of query pairs). (1) GPU tests of the new binaries;
# (2) V3 6-layer decode, base (call A's binary) and new in turn, two processes each;
# (3) ncu per-kernel times of the new eager decode on the 4-layer file.
set -uo pipefail
E=$OUT/b; mkdir -p $E; trap "cd $OUT && tar czf b.tgz b && rm -rf b" EXIT
A=/tmp/kt-base; N=/tmp/kt-new; mkdir -p $A $N
tar xJf .device-carry/s29a/bin.tar.xz -C $A; tar xJf .device-carry/s29b/bin.tar.xz -C $N; chmod +x $A/* $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s29b/COMMIT)"
export KT_REQUIRE_GPU=1
for t in cuda_linear cuda_host_link hybrid_forward hybrid_graph; do
  timeout 240 $N/$t --test-threads 2 > $E/test_$t.log 2>&1; log "test $t rc $? $(grep -o 'test result.*' $E/test_$t.log | tr '\n' ' ')"
done
unset KT_REQUIRE_GPU
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"first_gpu_ms":[0-9.]*\|"tail_ms":[0-9.]*\|"routed_bandwidth_fraction":[0-9.]*'
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_6.log 2>&1; log "gen 6 rc $? $(tail -1 $E/gen_6.log)"
for r in 1 2; do
  for v in base new; do
    [ $((SECONDS-t0)) -gt 470 ] && { log "skip $v $r"; continue; }
    B=$A; [ $v = new ] && B=$N
    timeout 100 $B/kt-bench decode --model $G --rules rules/deepseek-v3-hybrid.yaml --prompt-len 1024 --gen-len 128 \
      --threads 16 --json --repetitions 3 > $E/dec_${v}_$r.out 2> $E/dec_${v}_$r.err
    log "decode $v $r rc $? $(grep -o "$J" $E/dec_${v}_$r.out | tr '\n' ' ')"
  done
done
rm -f $G
if [ $((SECONDS-t0)) -lt 480 ]; then
  G=/tmp/v3_4.gguf
  timeout 60 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 4 --out $G --threads 16 > $E/gen_4.log 2>&1; log "gen 4 rc $?"
  timeout 100 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base -c 1400 \
    --log-file $E/ncu.csv $N/kt-bench decode --model $G --rules rules/deepseek-v3-hybrid.yaml \
    --prompt-len 64 --gen-len 2 --threads 16 --eager --json > $E/ncu_app.out 2> $E/ncu_app.err
  log "ncu rc $? lines $(wc -l < $E/ncu.csv)"
  rm -f $G
fi
log done
