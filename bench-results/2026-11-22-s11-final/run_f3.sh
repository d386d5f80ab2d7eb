#!/usr/bin/env bash
# Session 11 call F3: one more instance for issue 6's decode ratio. llama.cpp tg128, kt hybrid decode new (610d7a3,
# KT_PREFETCH_AB=1: prefetch off/on once more in the process) / base (cd4ad61) / new, llama.cpp tg128 again.
set -uo pipefail
E=$OUT/f3; mkdir -p $E; trap 'cd $OUT && tar czf f3.tgz f3 && rm -rf f3' EXIT
D=.device-carry/s11f2; B=/tmp/kt-bin; mkdir -p $B && tar xJf $D/bin.tar.xz -C $B ./kt-bench
xz -dc .device-carry/s11base/kt-bench.xz > $B/kt-bench-base; chmod +x $B/kt-bench-base
xz -dc $D/llamacpp-bench.xz > $B/llamacpp-bench; chmod +x $B/llamacpp-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $D/COMMIT)"
G=/tmp/v2l.gguf
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
ll() { timeout 40 $B/llamacpp-bench -m $G -p 0 -n 128 -t 16 -r 2 > $E/llama$1.out 2> $E/llama$1.err; log "llama$1 rc $? $(grep -o '"avg_ts":[0-9.]*' $E/llama$1.out | tr '\n' ' ')"; }
dec() { env ${3:-} timeout 90 $2 decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json \
    > $E/dec_$1.out 2> $E/dec_$1.err; log "dec $1 rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*' $E/dec_$1.out | tr '\n' ' ')"; }
ll 1; dec new_1 $B/kt-bench KT_PREFETCH_AB=1; dec base_1 $B/kt-bench-base; dec new_2 $B/kt-bench; ll 2
log done
