#!/usr/bin/env bash
# Session 30 call G: the mid GEMV (the MLA value expansion) loading two k steps' weights before
# it multiplies: its tests, ncu per-kernel times (eager, V3 4 layers) and the V3 6-layer decode,
# new against base (bd5c237) in turn.
set -uo pipefail
E=$OUT/g; mkdir -p $E; trap "cd $OUT && tar czf g.tgz g && rm -rf g" EXIT
N=/tmp/kt-g; mkdir -p $N; tar xJf .device-carry/s30g/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1)"
export KT_REQUIRE_GPU=1
for t in cuda_linear hybrid_graph hybrid_forward; do
  timeout 150 $N/$t --test-threads 2 > $E/test_$t.log 2>&1; log "test $t rc $? $(grep -o 'test result.*' $E/test_$t.log)"
done
unset KT_REQUIRE_GPU
G=/tmp/v3_4.gguf
timeout 60 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 4 --out $G --threads 16 > $E/gen_4.log 2>&1; log "gen 4 rc $?"
for b in base new; do
  B=$N/kt-bench; [ $b = base ] && B=$N/kt-bench-base
  timeout 100 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base -c 1400 \
    --log-file $E/ncu_$b.csv $B decode --model $G --rules rules/deepseek-v3-hybrid.yaml \
    --prompt-len 64 --gen-len 2 --threads 16 --eager --json > $E/ncu_app_$b.out 2> $E/ncu_app_$b.err
  log "ncu $b rc $? m-kernel ns: $(grep kt_gemv_nt_m $E/ncu_$b.csv | awk -F'","' '{print $NF}' | tr -d '",' | sort -n | awk '{a[NR]=$1} END {print "n",NR,"median",a[int((NR+1)/2)]}')"
done
rm -f $G
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"first_gpu_ms":[0-9.]*\|"routed_bandwidth_fraction":[0-9.]*'
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_6.log 2>&1; log "gen 6 rc $? $(tail -1 $E/gen_6.log)"
for r in 1 2; do for b in base new; do
  [ $((SECONDS-t0)) -gt 520 ] && { log "skip $b $r"; continue; }
  B=kt-bench; [ $b = base ] && B=kt-bench-base
  timeout 100 $N/$B decode --model $G --rules rules/deepseek-v3-hybrid.yaml --prompt-len 1024 --gen-len 128 \
    --threads 16 --json --repetitions 3 > $E/dec_${b}_$r.out 2> $E/dec_${b}_$r.err
  log "decode $b $r rc $? $(grep -o "$J" $E/dec_${b}_$r.out | tr '\n' ' ')"
done; done
rm -f $G
log done
