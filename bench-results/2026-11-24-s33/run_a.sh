#!/usr/bin/env bash
# Session 33 call A: decode on the resident experts (decode_resident). The GPU tests the change
# reaches, then the V3 6-layer hybrid decode with the GPU-prefill rules (43 resident experts a
# layer) with the option off and on, processes taking turns, and the V2-Lite pair with 16
# resident experts.
set -uo pipefail
E=$OUT/a; mkdir -p $E; trap 'cd $OUT && tar czf a.tgz a && rm -rf a' EXIT
N=/tmp/kt-a; mkdir -p $N; tar xJf .device-carry/s33a/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s33a/COMMIT | tr '\n' ' ')"
export KT_REQUIRE_GPU=1
for t in cuda_moe_experts cuda_host_link hybrid_graph hybrid_prefill hybrid_pipeline hybrid_forward; do
  timeout 150 $N/$t --test-threads 2 --nocapture > $E/test_$t.log 2>&1; log "test $t rc $? $(grep -o 'test result.*' $E/test_$t.log)"
done
grep "RMS difference" $E/test_hybrid_graph.log | tee -a $E/summary.txt
unset KT_REQUIRE_GPU
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction_paired":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"resident_choice_share":[0-9.null]*\|"routed_bytes_per_token":[0-9.]*\|"decode_bound_fraction":[0-9.]*'
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_v3.log 2>&1; log "gen v3 rc $? $(tail -1 $E/gen_v3.log)"
for i in 1 2; do for m in off on; do
  timeout 150 $N/kt-bench decode --model $G --rules rules/gpu-prefill/deepseek-v3-hybrid.yaml --decode-resident $m \
    --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 3 > $E/dec_v3_${m}_$i.out 2> $E/dec_v3_${m}_$i.err
  log "decode v3 $m $i rc $? $(grep -o "$J" $E/dec_v3_${m}_$i.out | tr '\n' ' ')"
done; done
rm -f $G
G=/tmp/v2l.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen_v2l.log 2>&1; log "gen v2l rc $? $(tail -1 $E/gen_v2l.log)"
for m in off on; do
  timeout 120 $N/kt-bench decode --model $G --rules rules/gpu-prefill/deepseek-v2-lite-hybrid.yaml --prefill-resident 16 \
    --decode-resident $m --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 3 > $E/dec_v2l_$m.out 2> $E/dec_v2l_$m.err
  log "decode v2l $m rc $? $(grep -o "$J" $E/dec_v2l_$m.out | tr '\n' ' ')"
done
rm -f $G
log done
