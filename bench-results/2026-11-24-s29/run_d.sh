#!/usr/bin/env bash
# Session 29 call D: round 3 of the V3 GPU stretch: the FFN entry's router logits and the long-row
# GEMV (kt_gemv_nt_v: bf16 linears, the eager f32 router) load in chunks too, the short GEMV
# (the MLA query absorption) a kernel of its own. (1) GPU tests; (2) ncu of the fused FFN entry
# alone (its kernel test: V2-Lite, V3 at 7168, 61 experts); (3) V3 6-layer decode, base (call A's
# binary) and new in turn, two processes each; (4) ncu of the MLA kernels of an eager decode
# after a 1024-token prompt (4-layer file).
set -uo pipefail
E=$OUT/d; mkdir -p $E; trap "cd $OUT && tar czf d.tgz d && rm -rf d" EXIT
A=/tmp/kt-base; N=/tmp/kt-new; mkdir -p $A $N
tar xJf .device-carry/s29a/bin.tar.xz -C $A; tar xJf .device-carry/s29d/bin.tar.xz -C $N; chmod +x $A/* $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s29d/COMMIT)"
export KT_REQUIRE_GPU=1
for t in cuda_linear cuda_host_link cuda_gating hybrid_forward hybrid_graph; do
  timeout 240 $N/$t --test-threads 2 > $E/test_$t.log 2>&1; log "test $t rc $? $(grep -o 'test result.*' $E/test_$t.log | tr '\n' ' ')"
done
timeout 120 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base -k regex:route_signal \
  --log-file $E/ncu_entry.csv $N/cuda_host_link --exact fused_ffn_entry_matches_norm_router_gating > $E/ncu_entry_app.log 2>&1
log "ncu entry rc $? $(grep -c route_signal $E/ncu_entry.csv)"
unset KT_REQUIRE_GPU
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"first_gpu_ms":[0-9.]*\|"tail_ms":[0-9.]*\|"routed_bandwidth_fraction":[0-9.]*'
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_6.log 2>&1; log "gen 6 rc $? $(tail -1 $E/gen_6.log)"
for r in 1 2; do
  for v in base new; do
    [ $((SECONDS-t0)) -gt 460 ] && { log "skip $v $r"; continue; }
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
  timeout 90 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base -k regex:mla \
    --log-file $E/ncu_mla.csv $N/kt-bench decode --model $G --rules rules/deepseek-v3-hybrid.yaml \
    --prompt-len 1024 --gen-len 2 --threads 16 --eager --json > $E/ncu_mla_app.out 2> $E/ncu_mla_app.err
  log "ncu mla rc $? lines $(wc -l < $E/ncu_mla.csv)"
  rm -f $G
fi
log done
