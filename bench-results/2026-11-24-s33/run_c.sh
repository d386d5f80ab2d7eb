#!/usr/bin/env bash
# Session 33 call C: decode_resident with the choices read by one small kernel (the staging
# kernel reads them in device memory). Tests, the V2-Lite pair (16 resident experts), the V3
# pairs (43), and where nsys exists a kernel profile of a short V2-Lite decode with it on.
set -uo pipefail
E=$OUT/c; mkdir -p $E; trap 'cd $OUT && tar czf c.tgz c && rm -rf c' EXIT
N=/tmp/kt-c; mkdir -p $N; tar xJf .device-carry/s33c/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s33c/COMMIT | tr '\n' ' ')"
export KT_REQUIRE_GPU=1
for t in cuda_moe_experts hybrid_graph; do
  timeout 150 $N/$t --test-threads 2 --nocapture > $E/test_$t.log 2>&1; log "test $t rc $? $(grep -o 'test result.*' $E/test_$t.log)"
done
unset KT_REQUIRE_GPU
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction_paired":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"resident_choice_share":[0-9.null]*\|"prefetches_per_token":[0-9.]*'
G=/tmp/v2l.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen_v2l.log 2>&1; log "gen v2l rc $? $(tail -1 $E/gen_v2l.log)"
for m in off on off on; do
  timeout 120 $N/kt-bench decode --model $G --rules rules/gpu-prefill/deepseek-v2-lite-hybrid.yaml --prefill-resident 16 \
    --decode-resident $m --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 3 > $E/dec_v2l_$m.out 2> $E/dec_v2l_$m.err
  log "decode v2l $m rc $? $(grep -o "$J" $E/dec_v2l_$m.out | tr '\n' ' ')"
done
if command -v nsys > /dev/null; then
  timeout 150 nsys profile -t cuda --cuda-graph-trace=node -o $E/v2l_on --force-overwrite true $N/kt-bench decode --model $G \
    --rules rules/gpu-prefill/deepseek-v2-lite-hybrid.yaml --prefill-resident 16 --decode-resident on --prompt-len 256 \
    --gen-len 32 --threads 16 > $E/nsys_run.log 2>&1; log "nsys rc $?"
  nsys stats -r cuda_gpu_kern_sum $E/v2l_on.nsys-rep > $E/v2l_on_kern.txt 2>&1; head -40 $E/v2l_on_kern.txt | cut -c1-200
  rm -f $E/v2l_on.nsys-rep $E/v2l_on.sqlite
else log "no nsys"; fi
rm -f $G
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_v3.log 2>&1; log "gen v3 rc $? $(tail -1 $E/gen_v3.log)"
for m in off on off on; do
  timeout 150 $N/kt-bench decode --model $G --rules rules/gpu-prefill/deepseek-v3-hybrid.yaml --decode-resident $m \
    --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 3 > $E/dec_v3_$m.$SECONDS.out 2> $E/dec_v3_$m.err
  log "decode v3 $m rc $? $(grep -ho "$J" $(ls -t $E/dec_v3_$m.*.out | head -1) | tr '\n' ' ')"
done
rm -f $G
log done
