#!/usr/bin/env bash
# Session 23 call G: the decode items' rows (knob x23h: 0 = main, 128 rows while a phase keeps 64 items; 1 = 256 rows
# / 32 items; 2 = 512 rows / 32 items; 3 = 256 rows / 64 items), in one process: the MoE at one token (KT_X_AB in
# kt-bench moe) and the V2-Lite hybrid decode (KT_X_AB + KT_X_ROUNDS: graph decodes of the same tokens per value).
set -uo pipefail
E=$OUT/g; mkdir -p $E; trap 'cd $OUT && tar czf g.tgz g && rm -rf g' EXIT
B=/tmp/kt-bin; mkdir -p $B && xz -dc .device-carry/s23xh/kt-bench.xz > $B/kt-bench && chmod +x $B/kt-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s23xh/COMMIT)"
for r in 1 2; do
  for s in deepseek-v3 deepseek-v2-lite; do
    KT_X_AB=0,1,2,3 timeout 60 $B/kt-bench moe --shape $s --format q4_k --tokens 1 --threads 16 --seconds 3 > $E/moe_${s}_$r.txt 2>&1
    log "moe $s $r rc $? $(grep -o 'read bandwidth [0-9.]* GB/s' $E/moe_${s}_$r.txt) $(grep x_variant $E/moe_${s}_$r.txt | sort | tr '\n' ' ')"
  done
done
G=/tmp/v2l.gguf
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
for r in 1 2 3; do
  [ $((SECONDS-t0)) -gt 420 ] && continue
  KT_X_AB=0,1,2 KT_X_ROUNDS=3 timeout 100 $B/kt-bench decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml \
    --prompt-len 1024 --gen-len 128 --threads 16 --json > $E/dec_$r.out 2> $E/dec_$r.err
  log "dec $r rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*' $E/dec_$r.out | head -2 | tr '\n' ' ')"
  grep x_variant $E/dec_$r.err | sort -s -k2,2 | tee -a $E/summary.txt
done
rm -f $G
log done
