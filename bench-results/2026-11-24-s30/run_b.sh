#!/usr/bin/env bash
# Session 30 call B: the main thread pinned to core 0 (KT_X_PIN, kt-bench-x = d8b0d44 + x30 knob
# + pin) against unpinned, in the V3 6-layer and V2-Lite decodes; "new" = call A's GPU build.
set -uo pipefail
E=$OUT/b; mkdir -p $E; trap "cd $OUT && tar czf b.tgz b && rm -rf b" EXIT
N=/tmp/kt-b; mkdir -p $N; tar xJf .device-carry/s30a/bin.tar.xz -C $N ./kt-bench; xz -dc .device-carry/s30b/kt-bench-x.xz > $N/kt-bench-x; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1)"
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"first_gpu_ms":[0-9.]*\|"routed_bandwidth_fraction":[0-9.]*\|"experts_quantiles_ms":[^]]*\]'
dec() { # tag binary rules pin
  if [ $4 = 1 ]; then export KT_X_PIN=1; else unset KT_X_PIN; fi
  timeout 110 $N/$2 decode --model $G --rules rules/$3 --prompt-len 1024 --gen-len 128 \
    --threads 16 --json --repetitions 3 > $E/dec_$1.out 2> $E/dec_$1.err
  log "decode $1 rc $? $(grep -o "$J" $E/dec_$1.out | tr '\n' ' ') $(grep x_pin $E/dec_$1.err)"
}
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_6.log 2>&1; log "gen 6 rc $? $(tail -1 $E/gen_6.log)"
for r in 1 2 3; do dec v3_x_$r kt-bench-x deepseek-v3-hybrid.yaml 0; dec v3_pin_$r kt-bench-x deepseek-v3-hybrid.yaml 1; done
dec v3_new_1 kt-bench deepseek-v3-hybrid.yaml 0
rm -f $G
G=/tmp/v2l.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen_v2l.log 2>&1; log "gen v2l rc $? $(tail -1 $E/gen_v2l.log)"
for r in 1 2; do
  [ $((SECONDS-t0)) -gt 500 ] && { log "skip v2l $r"; continue; }
  dec v2l_x_$r kt-bench-x deepseek-v2-lite-hybrid.yaml 0; dec v2l_pin_$r kt-bench-x deepseek-v2-lite-hybrid.yaml 1
done
rm -f $G
log done
