#!/usr/bin/env bash
# Session 12 final call 1 (engine + GPU): main at COMMIT vs the session's start (s12base, 54a8a0b) on one V2-Lite
# GGUF: llama.cpp pp1024 + tg128 (-r 3), hybrid decode (new: --repetitions 5, the mean after a warm-up, as
# llama-bench; base: its one graph decode) interleaved x2, llama.cpp tg128 -r 5 again, kt cpu decode, prefill with
# the GPU-prefill rules, every GPU test binary (KT_REQUIRE_GPU=1), MLA timing + torch MLA, W4A16 timing x3 + torch
# fp16 x2 (before and after), memcheck of an MLA decode test and of the hybrid graph test.
set -uo pipefail
E=$OUT/f1; mkdir -p $E/tests $E/w4; trap 'cd $OUT && tar czf f1.tgz f1 && rm -rf f1' EXIT
D=.device-carry/s12f; B=/tmp/kt-bin; mkdir -p $B && tar xJf $D/bin.tar.xz -C $B
xz -dc .device-carry/s12base/kt-bench.xz > $B/kt-bench-base; xz -dc $D/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/kt-bench-base $B/llamacpp-bench
G=/tmp/v2l.gguf; t0=$SECONDS
log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $D/COMMIT)"
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
timeout 80 $B/llamacpp-bench -m $G -p 1024 -n 128 -t 16 -r 3 > $E/llama1.out 2> $E/llama1.err; log "llama1 rc $? $(grep -o '"test":"[a-z0-9]*"\|"avg_ts":[0-9.]*' $E/llama1.out | tr '\n' ' ')"
dec() { # tag exe rules gen [args]
  timeout 100 $2 decode --model $G --rules $3 --prompt-len 1024 --gen-len $4 --threads 16 --json ${5:-} \
    > $E/dec_$1.out 2> $E/dec_$1.err; log "dec $1 rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"samples":[^]]*\|"decode_graph_captures":[0-9]*' $E/dec_$1.out | tr '\n' ' ')"; }
H=rules/deepseek-v2-lite-hybrid.yaml
dec new_1 $B/kt-bench $H 128 "--repetitions 5"; dec base_1 $B/kt-bench-base $H 128
dec base_2 $B/kt-bench-base $H 128; dec new_2 $B/kt-bench $H 128 "--repetitions 5"
timeout 50 $B/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 5 > $E/llama2.out 2> $E/llama2.err; log "llama2 rc $? $(grep -o '"avg_ts":[0-9.]*' $E/llama2.out | tr '\n' ' ')"
[ $((SECONDS-t0)) -lt 250 ] && dec cpu $B/kt-bench rules/deepseek-v2-lite-cpu.yaml 32
[ $((SECONDS-t0)) -lt 290 ] && { timeout 75 $B/kt-bench prefill --model $G --rules rules/gpu-prefill/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --threads 16 --json > $E/prefill_gpu.out 2> $E/prefill_gpu.err; log "prefill gpu rc $? $(grep -o '"tokens_per_s":[0-9.]*' $E/prefill_gpu.out | head -1)"; }
rm -f $G
for t in $B/tests/*; do n=$(basename $t)
  [ $((SECONDS-t0)) -gt 420 ] && { log "tests: budget stop before $n"; break; }
  KT_REQUIRE_GPU=1 timeout 40 $t --test-threads 1 > $E/tests/$n.log 2>&1; log "test $n rc $? $(grep -o 'test result: [a-z]*\. [0-9]* passed; [0-9]* failed' $E/tests/$n.log)"
done
[ $((SECONDS-t0)) -lt 440 ] && { KT_REQUIRE_GPU=1 timeout 25 $B/cuda_mla_timing "decode 64x4096" "decode 64x1024" "decode 8x4096" "decode 1x4096" "prefill 512x512" > $E/mla_timing.txt 2>&1; log "mla timing rc $? $(grep -m2 '64 x 4096\|64x4096' $E/mla_timing.txt | tr '\n' ' ')"; }
[ $((SECONDS-t0)) -lt 450 ] && { timeout 25 python3 cuda/bench_torch_mla.py > $E/torch_mla.txt 2>&1; log "torch mla rc $?"; }
export KT_W4A16_TOKENS=1,8,9,12,16
[ $((SECONDS-t0)) -lt 460 ] && { timeout 30 python3 cuda/bench_torch_matmul.py > $E/w4/torch.txt 2>&1; log "torch matmul rc $?"; }
for i in 1 2 3; do [ $((SECONDS-t0)) -gt 490 ] && break
  KT_REQUIRE_GPU=1 timeout 20 $B/cuda_w4a16_timing > $E/w4/kt_new$i.txt 2>&1; log "w4a16 round $i"; done
[ $((SECONDS-t0)) -lt 500 ] && { timeout 30 python3 cuda/bench_torch_matmul.py > $E/w4/torch_after.txt 2>&1; log "torch matmul (after) rc $?"; }
unset KT_W4A16_TOKENS
(cd $E/w4 && python3 $OLDPWD/bench-results/2026-11-22-s12-w4a16s12/summary.py > summary.txt 2>&1)
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
[ -n "$san" ] && [ $((SECONDS-t0)) -lt 520 ] && { KT_REQUIRE_GPU=1 timeout 35 $san --tool memcheck --error-exitcode 9 $B/tests/cuda_mla --test-threads=1 decode_batches_of_different_lengths > $E/memcheck_mla.txt 2>&1; log "memcheck mla rc $? $(grep 'ERROR SUMMARY' $E/memcheck_mla.txt | tail -1)"; }
[ -n "$san" ] && [ $((SECONDS-t0)) -lt 540 ] && { KT_REQUIRE_GPU=1 timeout 50 $san --tool memcheck --error-exitcode 9 $B/tests/hybrid_graph --test-threads=1 a_cleared_cache_keeps_its_graph > $E/memcheck_graph.txt 2>&1; log "memcheck graph rc $? $(grep 'ERROR SUMMARY' $E/memcheck_graph.txt | tail -1)"; }
log done
