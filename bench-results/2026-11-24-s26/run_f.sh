#!/usr/bin/env bash
# Session 26 call F (main at COMMIT: repacked stacks in mapped pages; prev = PREV, the same code with allocator-zeroed
# buffers): the repack alone with 16 threads (examples/repack_rate, allocated vs mapped first touch), then the hybrid
# DeepSeek-V2-Lite load with int4 CPU experts (rules/cpu-int4/deepseek-v2-lite-hybrid.yaml), new and prev taking turns.
set -uo pipefail
E=$OUT/f; mkdir -p $E; trap 'cd $OUT && tar czf f.tgz f && rm -rf f' EXIT
C=.device-carry/s26f; B=/tmp/kt-bin; mkdir -p $B
for x in kt-bench kt-bench-prev repack_rate; do xz -dc $C/$x.xz > $B/$x; chmod +x $B/$x; done
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); new $(cat $C/COMMIT) prev $(cat $C/PREV)"
KT_THREADS=16 timeout 100 $B/repack_rate 512 1408x2048 2 > $E/repack_rate.txt 2>&1; log "repack_rate rc $? $(grep -v dequant $E/repack_rate.txt | tr '\n' ' ')"
G=/tmp/v2l.gguf
timeout 90 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
J='"gpu_load_s":[0-9.]*\|"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*'
dec() { # binary tag
  [ $((SECONDS-t0)) -gt 500 ] && { log "skip dec $2"; return; }
  /usr/bin/time -f "%e s %M KB" -o $E/dec_$2.time timeout 150 $B/$1 decode --model $G --rules rules/cpu-int4/deepseek-v2-lite-hybrid.yaml \
    --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 3 > $E/dec_$2.out 2> $E/dec_$2.err
  log "dec $2 rc $? $(grep -o "$J" $E/dec_$2.out | head -5 | tr '\n' ' ') $(cat $E/dec_$2.time)"
}
dec kt-bench new1
dec kt-bench-prev prev1
dec kt-bench new2
dec kt-bench-prev prev2
dec kt-bench new3
rm -f $G
log done
