#!/usr/bin/env bash
# Session 12 call B (issue 6): decode graph kept across a cleared cache (+ --repetitions) vs base (54a8a0b);
# GPU tests of the hybrid graph; llama.cpp tg128 -r 5.
set -uo pipefail
E=$OUT/b; mkdir -p $E/tests; trap 'cd $OUT && tar czf b.tgz b && rm -rf b' EXIT
D=.device-carry/s12b; B=/tmp/kt-bin; mkdir -p $B && tar xJf $D/bin.tar.xz -C $B
xz -dc .device-carry/s12base/kt-bench.xz > $B/kt-bench-base; xz -dc $D/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(head -1 $D/COMMIT)"
for t in hybrid_graph hybrid_pipeline hybrid_forward; do
  KT_REQUIRE_GPU=1 timeout 60 $B/$t --test-threads 1 > $E/tests/$t.log 2>&1; log "test $t rc $? $(grep -o 'test result: [a-z]*\. [0-9]* passed; [0-9]* failed' $E/tests/$t.log)"; done
G=/tmp/v2l.gguf
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
ll() { timeout 50 $B/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 5 > $E/llama$1.out 2> $E/llama$1.err; log "llama$1 rc $? $(grep -o '"avg_ts":[0-9.]*\|"samples_s":[^]]*' $E/llama$1.out | tr '\n' ' ')"; }
dec() { env ${3:-} timeout 100 $2 decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json ${4:-} \
    > $E/dec_$1.out 2> $E/dec_$1.err; log "dec $1 rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"samples":[^]]*\|"decode_graph_captures":[0-9]*\|"decode_graph_launches":[0-9]*' $E/dec_$1.out | tr '\n' ' ')"; }
ll 1
dec new_1 $B/kt-bench "" "--repetitions 5"
dec base_1 $B/kt-bench-base KT_PREFETCH_AB=2
dec new_2 $B/kt-bench "" "--repetitions 5"
ll 2
[ $((SECONDS-t0)) -lt 200 ] && dec base_2 $B/kt-bench-base
log done
