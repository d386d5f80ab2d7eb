#!/usr/bin/env bash
# Session 10 final call 1 (engine + GPU): main at the commit in COMMIT (the session-10 merges)
# vs the session's start (s10base, 7d522c4) on one V2-Lite GGUF: llama.cpp pp1024 + tg128, hybrid decode
# A/B interleaved x4 (ABBA), llama.cpp tg128 again, kt cpu decode, hybrid prefill (GPU-prefill rules), the GPU
# test binaries, the MLA timing example, torch's MLA script, compute-sanitizer on a cuda_mla decode test.
# (The W4A16 timing and its torch figures were measured on the merged code in w4a16s10b's call.)
set -uo pipefail
E=$OUT/f1; mkdir -p $E/tests; trap 'cd $OUT && tar czf f1.tgz f1' EXIT
D=.device-carry/s10f1; B=/tmp/kt-bin; mkdir -p $B && tar xJf $D/bin.tar.xz -C $B; xz -dc .device-carry/s10basexz/kt-bench.xz > $B/kt-bench-base; chmod +x $B/kt-bench-base; xz -dc $D/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/llamacpp-bench
G=/tmp/v2l.gguf; t0=$SECONDS
log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $D/COMMIT)"
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
timeout 70 $B/llamacpp-bench -m $G -p 1024 -n 128 -t 16 -r 2 > $E/llama1.out 2> $E/llama1.err; log "llama1 rc $? $(grep -o '"test":"[a-z0-9]*"\|"avg_ts":[0-9.]*' $E/llama1.out | tr '\n' ' ')"
dec() { # tag exe rules gen
  timeout 60 $2 decode --model $G --rules $3 --prompt-len 1024 --gen-len $4 --threads 16 --json \
    > $E/dec_$1.out 2> $E/dec_$1.err; log "dec $1 rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"dram_gbps":[0-9.]*\|"ms_per_token":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*' $E/dec_$1.out | tr '\n' ' ')"; }
H=rules/deepseek-v2-lite-hybrid.yaml
# ABBA order (new base base new ...) so the run-order effect seen in session 8 cancels over pairs
for rep in 1 2 3 4; do
  [ $((SECONDS-t0)) -gt 210 ] && break
  if [ $((rep % 2)) = 1 ]; then dec new_$rep $B/kt-bench $H 128; dec base_$rep $B/kt-bench-base $H 128
  else dec base_$rep $B/kt-bench-base $H 128; dec new_$rep $B/kt-bench $H 128; fi
done
timeout 40 $B/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 2 > $E/llama2.out 2> $E/llama2.err; log "llama2 rc $? $(grep -o '"avg_ts":[0-9.]*' $E/llama2.out | tr '\n' ' ')"
[ $((SECONDS-t0)) -lt 270 ] && dec cpu $B/kt-bench rules/deepseek-v2-lite-cpu.yaml 32
for r in gpu; do R=$H; [ $r = gpu ] && R=rules/gpu-prefill/deepseek-v2-lite-hybrid.yaml
  [ $((SECONDS-t0)) -lt 300 ] && { timeout 40 $B/kt-bench prefill --model $G --rules $R --prompt-len 1024 --threads 16 --json > $E/prefill_$r.out 2> $E/prefill_$r.err; log "prefill $r rc $? $(grep -o '"tokens_per_s":[0-9.]*' $E/prefill_$r.out | head -1)"; }
done
rm -f $G
for t in $B/tests/*; do n=$(basename $t)
  [ $((SECONDS-t0)) -gt 380 ] && { log "tests: budget stop before $n"; break; }
  KT_REQUIRE_GPU=1 timeout 40 $t --test-threads 1 > $E/tests/$n.log 2>&1; log "test $n rc $? $(grep -o 'test result: [a-z]*\. [0-9]* passed; [0-9]* failed' $E/tests/$n.log)"
done
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
[ $((SECONDS-t0)) -lt 400 ] && { KT_REQUIRE_GPU=1 timeout 25 $B/cuda_mla_timing "decode 64x4096" "decode 64x1024" "decode 8x4096" "decode 1x4096" "prefill 512x512" > $E/mla_timing.txt 2>&1; log "mla timing rc $? $(grep -m3 '64 x 4096\|64x4096' $E/mla_timing.txt | tr '\n' ' ')"; }
[ $((SECONDS-t0)) -lt 410 ] && { timeout 25 python3 cuda/bench_torch_mla.py > $E/torch_mla.txt 2>&1; log "torch mla rc $?"; }
[ -n "$san" ] && [ $((SECONDS-t0)) -lt 420 ] && { KT_REQUIRE_GPU=1 timeout 35 $san --tool memcheck --error-exitcode 9 $B/tests/cuda_mla --test-threads=1 decode_batches_of_different_lengths > $E/memcheck_mla.txt 2>&1; log "memcheck mla rc $? $(grep 'ERROR SUMMARY' $E/memcheck_mla.txt | tail -1)"; }
