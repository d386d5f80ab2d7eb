#!/usr/bin/env bash
# Session 24 call F: call D's main/new rows again with the order reversed (new first in each round).
set -uo pipefail
E=$OUT/f; mkdir -p $E; trap "cd $OUT && tar czf f.tgz f && rm -rf f" EXIT
B=/tmp/kt-bin; mkdir -p $B
xz -dc .device-carry/s23cuda/kt-bench.xz > $B/main && xz -dc .device-carry/s24cuda/kt-bench.xz > $B/new && chmod +x $B/main $B/new
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); main $(cat .device-carry/s23cuda/COMMIT) new $(cat .device-carry/s24cuda/COMMIT)"
for r in 1 2 3; do
  for v in new main; do
    for s in deepseek-v3 deepseek-v2-lite; do
      timeout 60 $B/$v moe --shape $s --format q4_k --tokens 1 --threads 16 --seconds 2 --json 2>>$E/moe_err.txt | tail -1 > $E/moe_${v}_${s}_$r.json
      log "moe $v $s $r $(grep -o '"ms_per_call":[0-9.]*\|"dram_gbps":[0-9.]*' $E/moe_${v}_${s}_$r.json | tr '\n' ' ')"
    done
  done
done
G=/tmp/v2l.gguf
timeout 60 $B/new gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
for r in 1 2; do
  for v in new main; do
    [ $((SECONDS-t0)) -gt 520 ] && continue
    timeout 60 $B/$v decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 5 > $E/dec_${v}_$r.out 2> $E/dec_${v}_$r.err
    log "dec $v $r rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*' $E/dec_${v}_$r.out | head -5 | tr '\n' ' ')"
  done
done
rm -f $G
log done
