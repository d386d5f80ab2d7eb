#!/usr/bin/env bash
# Session 29 call E: round 4 of the decode's GPU stretch: call D's plus the MLA decode of one
# token on the 16-row kernel for up to 128 heads (V3: 8 blocks of rows, up to 33 key splits
# each) and the FFN entry's logits reloaded in one trip. (1) GPU tests; (2) ncu of the fused entry
# alone; (3) V3 6-layer decode, base (call A's binary) and new in turn, two processes each, and
# llama.cpp's tg128 on the same file; (4) V2-Lite (27 layers) decode, base and new; (5) ncu of the
# MLA kernels of an eager V3 decode after a 1024-token prompt (4-layer file).
set -uo pipefail
E=$OUT/e; mkdir -p $E; trap "cd $OUT && tar czf e.tgz e && rm -rf e" EXIT
A=/tmp/kt-base; N=/tmp/kt-new; mkdir -p $A $N
tar xJf .device-carry/s29a/bin.tar.xz -C $A; tar xJf .device-carry/s29e/bin.tar.xz -C $N
xz -dc .device-carry/s29e/llamacpp-bench.xz > $N/llamacpp-bench; chmod +x $A/* $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s29e/COMMIT)"
export KT_REQUIRE_GPU=1
for t in cuda_mla cuda_linear cuda_host_link cuda_gating hybrid_forward hybrid_graph; do
  timeout 240 $N/$t --test-threads 2 > $E/test_$t.log 2>&1; log "test $t rc $? $(grep -o 'test result.*' $E/test_$t.log | tr '\n' ' ')"
done
timeout 120 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base -k regex:route_signal \
  --log-file $E/ncu_entry.csv $N/cuda_host_link --exact fused_ffn_entry_matches_norm_router_gating > $E/ncu_entry_app.log 2>&1
log "ncu entry rc $? $(grep route_signal $E/ncu_entry.csv | awk -F'","' '{print $9, $NF}' | tr '\n' ' ')"
unset KT_REQUIRE_GPU
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"first_gpu_ms":[0-9.]*\|"tail_ms":[0-9.]*\|"routed_bandwidth_fraction":[0-9.]*'
dec() { # tag binary model rules
  timeout 110 $2/kt-bench decode --model $3 --rules rules/$4 --prompt-len 1024 --gen-len 128 \
    --threads 16 --json --repetitions 3 > $E/dec_$1.out 2> $E/dec_$1.err
  log "decode $1 rc $? $(grep -o "$J" $E/dec_$1.out | tr '\n' ' ')"
}
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_6.log 2>&1; log "gen 6 rc $? $(tail -1 $E/gen_6.log)"
for r in 1 2; do dec v3_base_$r $A $G deepseek-v3-hybrid.yaml; dec v3_new_$r $N $G deepseek-v3-hybrid.yaml; done
timeout 100 $N/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 3 > $E/llama_v3_6.out 2> $E/llama_v3_6.err
log "llama v3 6 rc $? $(grep -o '"test":"[a-z0-9]*"\|"avg_ts":[0-9.]*' $E/llama_v3_6.out | tr '\n' ' ')"
rm -f $G
G=/tmp/v2l.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen_v2l.log 2>&1; log "gen v2l rc $? $(tail -1 $E/gen_v2l.log)"
if [ $((SECONDS-t0)) -lt 440 ]; then dec v2l_base_1 $A $G deepseek-v2-lite-hybrid.yaml; dec v2l_new_1 $N $G deepseek-v2-lite-hybrid.yaml; fi
rm -f $G
if [ $((SECONDS-t0)) -lt 500 ]; then
  G=/tmp/v3_4.gguf
  timeout 60 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 4 --out $G --threads 16 > $E/gen_4.log 2>&1; log "gen 4 rc $?"
  timeout 80 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base -k regex:mla \
    --log-file $E/ncu_mla.csv $N/kt-bench decode --model $G --rules rules/deepseek-v3-hybrid.yaml \
    --prompt-len 1024 --gen-len 2 --threads 16 --eager --json > $E/ncu_mla_app.out 2> $E/ncu_mla_app.err
  log "ncu mla rc $? $(tail -4 $E/ncu_mla.csv | awk -F'","' '{print $5, $9, $NF}' | tr '\n' ' ')"
  rm -f $G
fi
log done
