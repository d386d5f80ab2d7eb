#!/usr/bin/env bash
# Session 30 call I: the output projection's first weights prefetched into the L2 on the side
# stream while the attention runs (experiment variable KT_X_OPF: 0 = off), V3 6-layer decode,
# off / on in turn, one binary; its tests first.
set -uo pipefail
E=$OUT/i; mkdir -p $E; trap "cd $OUT && tar czf i.tgz i && rm -rf i" EXIT
N=/tmp/kt-i; mkdir -p $N; tar xJf .device-carry/s30i/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1)"
export KT_REQUIRE_GPU=1
for t in hybrid_graph hybrid_forward; do
  timeout 150 $N/$t --test-threads 2 > $E/test_$t.log 2>&1; log "test $t rc $? $(grep -o 'test result.*' $E/test_$t.log)"
done
unset KT_REQUIRE_GPU
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"first_gpu_ms":[0-9.]*\|"routed_bandwidth_fraction":[0-9.]*'
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_6.log 2>&1; log "gen 6 rc $? $(tail -1 $E/gen_6.log)"
for r in 1 2 3; do for o in 0 1; do
  [ $((SECONDS-t0)) -gt 480 ] && { log "skip $o $r"; continue; }
  KT_X_OPF=$o timeout 100 $N/kt-bench decode --model $G --rules rules/deepseek-v3-hybrid.yaml --prompt-len 1024 --gen-len 128 \
    --threads 16 --json --repetitions 3 > $E/dec_opf${o}_$r.out 2> $E/dec_opf${o}_$r.err
  log "decode opf$o $r rc $? $(grep -o "$J" $E/dec_opf${o}_$r.out | tr '\n' ' ')"
done; done
rm -f $G
log done
