#!/usr/bin/env bash
# Session 11 final call 1 (engine + GPU): main at COMMIT (chain11 prefetch, w4a16s11 spread plan, mla11) vs the
# session's start (s11base, cd4ad61) on one V2-Lite GGUF: llama.cpp pp1024 + tg128, hybrid decode ABBA x4, llama.cpp
# tg128 again, kt cpu decode, prefill with the GPU-prefill rules, the GPU test binaries, MLA timing + torch MLA,
# W4A16 timing (base example cd4ad61 vs new, interleaved) + torch fp16, memcheck of an MLA decode test.
set -uo pipefail
E=$OUT/f1; mkdir -p $E/tests $E/w4; trap 'cd $OUT && tar czf f1.tgz f1' EXIT
D=.device-carry/s11f; B=/tmp/kt-bin; mkdir -p $B && tar xJf $D/bin.tar.xz -C $B
xz -dc .device-carry/s11base/kt-bench.xz > $B/kt-bench-base; chmod +x $B/kt-bench-base
xz -dc $D/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/llamacpp-bench
mkdir -p /tmp/w4b && tar xJf .device-carry/w4a16s11/bins.tar.xz -C /tmp/w4b
G=/tmp/v2l.gguf; t0=$SECONDS
log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $D/COMMIT)"
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
timeout 70 $B/llamacpp-bench -m $G -p 1024 -n 128 -t 16 -r 2 > $E/llama1.out 2> $E/llama1.err; log "llama1 rc $? $(grep -o '"test":"[a-z0-9]*"\|"avg_ts":[0-9.]*' $E/llama1.out | tr '\n' ' ')"
dec() { # tag exe rules gen
  timeout 60 $2 decode --model $G --rules $3 --prompt-len 1024 --gen-len $4 --threads 16 --json \
    > $E/dec_$1.out 2> $E/dec_$1.err; log "dec $1 rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"predicted_hit_rate":[0-9.]*' $E/dec_$1.out | tr '\n' ' ')"; }
H=rules/deepseek-v2-lite-hybrid.yaml
for rep in 1 2 3 4; do
  [ $((SECONDS-t0)) -gt 200 ] && break
  if [ $((rep % 2)) = 1 ]; then dec new_$rep $B/kt-bench $H 128; dec base_$rep $B/kt-bench-base $H 128
  else dec base_$rep $B/kt-bench-base $H 128; dec new_$rep $B/kt-bench $H 128; fi
done
timeout 40 $B/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 2 > $E/llama2.out 2> $E/llama2.err; log "llama2 rc $? $(grep -o '"avg_ts":[0-9.]*' $E/llama2.out | tr '\n' ' ')"
[ $((SECONDS-t0)) -lt 260 ] && dec cpu $B/kt-bench rules/deepseek-v2-lite-cpu.yaml 32
[ $((SECONDS-t0)) -lt 280 ] && { timeout 75 $B/kt-bench prefill --model $G --rules rules/gpu-prefill/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --threads 16 --json > $E/prefill_gpu.out 2> $E/prefill_gpu.err; log "prefill gpu rc $? $(grep -o '"tokens_per_s":[0-9.]*' $E/prefill_gpu.out | head -1)"; }
rm -f $G
for t in $B/tests/*; do n=$(basename $t)
  [ $((SECONDS-t0)) -gt 400 ] && { log "tests: budget stop before $n"; break; }
  KT_REQUIRE_GPU=1 timeout 40 $t --test-threads 1 > $E/tests/$n.log 2>&1; log "test $n rc $? $(grep -o 'test result: [a-z]*\. [0-9]* passed; [0-9]* failed' $E/tests/$n.log)"
done
[ $((SECONDS-t0)) -lt 420 ] && { KT_REQUIRE_GPU=1 timeout 25 $B/cuda_mla_timing "decode 64x4096" "decode 64x1024" "decode 8x4096" "decode 1x4096" "prefill 512x512" > $E/mla_timing.txt 2>&1; log "mla timing rc $? $(grep -m2 '64 x 4096\|64x4096' $E/mla_timing.txt | tr '\n' ' ')"; }
[ $((SECONDS-t0)) -lt 430 ] && { timeout 25 python3 cuda/bench_torch_mla.py > $E/torch_mla.txt 2>&1; log "torch mla rc $?"; }
export KT_W4A16_TOKENS=1,8,12,16
for i in 1 2 3; do [ $((SECONDS-t0)) -gt 470 ] && break
  KT_REQUIRE_GPU=1 timeout 20 /tmp/w4b/timing_base > $E/w4/kt_base$i.txt 2>&1
  KT_REQUIRE_GPU=1 timeout 20 $B/cuda_w4a16_timing > $E/w4/kt_new$i.txt 2>&1; log "w4a16 round $i"; done
unset KT_W4A16_TOKENS
[ $((SECONDS-t0)) -lt 490 ] && { timeout 30 python3 cuda/bench_torch_matmul.py > $E/w4/torch.txt 2>&1; log "torch matmul rc $?"; }
cp .device-carry/w4a16s11/summary.py /tmp/w4sum.py; (cd $E/w4 && python3 /tmp/w4sum.py base new > summary.txt 2>&1)
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
[ -n "$san" ] && [ $((SECONDS-t0)) -lt 510 ] && { KT_REQUIRE_GPU=1 timeout 35 $san --tool memcheck --error-exitcode 9 $B/tests/cuda_mla --test-threads=1 decode_batches_of_different_lengths > $E/memcheck_mla.txt 2>&1; log "memcheck mla rc $? $(grep 'ERROR SUMMARY' $E/memcheck_mla.txt | tail -1)"; }
log done
