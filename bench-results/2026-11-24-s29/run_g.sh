#!/usr/bin/env bash
# Session 29 call G: (1) GPU tests of the short GEMV at 8 columns a warp; (2) ncu of the fused FFN
# entry at V3's shape (its kernel test's third launch) with warp-state and source sections: where
# its 27.5 us go; (3) ncu of the eager V3 decode's GEMV kernels, this binary and call E's; (4) V3
# 6-layer decode, call E's binary (prev) and this one in turn, two processes each.
set -uo pipefail
E=$OUT/g; mkdir -p $E; trap "cd $OUT && tar czf g.tgz g && rm -rf g" EXIT
P=/tmp/kt-prev; N=/tmp/kt-new; mkdir -p $P $N
tar xJf .device-carry/s29e/bin.tar.xz -C $P; tar xJf .device-carry/s29g/bin.tar.xz -C $N; chmod +x $P/* $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s29g/COMMIT)"
export KT_REQUIRE_GPU=1
for t in cuda_linear cuda_host_link hybrid_forward hybrid_graph; do
  timeout 240 $N/$t --test-threads 2 > $E/test_$t.log 2>&1; log "test $t rc $? $(grep -o 'test result.*' $E/test_$t.log | tr '\n' ' ')"
done
timeout 150 ncu --clock-control none --section SpeedOfLight --section WarpStateStats --section SourceCounters \
  --section LaunchStats --section Occupancy --print-details all -k regex:route_signal --launch-skip 2 --launch-count 1 \
  --log-file $E/ncu_entry_sections.txt $N/cuda_host_link --exact fused_ffn_entry_matches_norm_router_gating > $E/ncu_entry_app.log 2>&1
log "ncu entry sections rc $? $(grep -m3 'Duration\|Warp Cycles Per Issued' $E/ncu_entry_sections.txt | tr -s ' ' | tr '\n' ' ')"
unset KT_REQUIRE_GPU
G=/tmp/v3_4.gguf
timeout 60 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 4 --out $G --threads 16 > $E/gen_4.log 2>&1; log "gen 4 rc $?"
for v in prev new; do
  B=$P; [ $v = new ] && B=$N
  timeout 80 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base -k regex:gemv_nt \
    --log-file $E/ncu_gemv_$v.csv $B/kt-bench decode --model $G --rules rules/deepseek-v3-hybrid.yaml \
    --prompt-len 64 --gen-len 2 --threads 16 --eager --json > $E/ncu_gemv_app_$v.out 2> $E/ncu_gemv_app_$v.err
  log "ncu gemv $v rc $? $(tail -3 $E/ncu_gemv_$v.csv | awk -F'","' '{print $5, $9, $NF}' | tr '\n' ' ')"
done
rm -f $G
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"first_gpu_ms":[0-9.]*\|"tail_ms":[0-9.]*\|"routed_bandwidth_fraction":[0-9.]*'
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_6.log 2>&1; log "gen 6 rc $? $(tail -1 $E/gen_6.log)"
for r in 1 2; do
  for v in prev new; do
    [ $((SECONDS-t0)) -gt 500 ] && { log "skip $v $r"; continue; }
    B=$P; [ $v = new ] && B=$N
    timeout 100 $B/kt-bench decode --model $G --rules rules/deepseek-v3-hybrid.yaml --prompt-len 1024 --gen-len 128 \
      --threads 16 --json --repetitions 3 > $E/dec_${v}_$r.out 2> $E/dec_${v}_$r.err
    log "decode $v $r rc $? $(grep -o "$J" $E/dec_${v}_$r.out | tr '\n' ' ')"
  done
done
rm -f $G
log done
