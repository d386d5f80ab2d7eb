#!/usr/bin/env bash
# Session 17 call H (s17f = 875e698, this session's kernels, --features cuda; s16d = session 16's final binary): the
# main job's prefill on a synthetic V2-Lite Q4_K_M-like GGUF (27 layers; Q5_0 down projections), prompt 512, 16
# threads: kt with the `cpu` rules (everything on the CPU, weights as stored) and with the hybrid rules (experts on the
# CPU, the rest on the GPU), new against s16d in separate processes taking turns, two rounds; llama.cpp pp512 on the
# same file and threads in the same call.
set -uo pipefail
E=$OUT/h; mkdir -p $E; trap 'cd $OUT && tar czf h.tgz h && rm -rf h' EXIT
B=/tmp/kt; mkdir -p $B && tar xJf .device-carry/s17f/bin.tar.xz -C $B
S=/tmp/s16d; mkdir -p $S && tar xJf .device-carry/s16d/bin.tar.xz -C $S
xz -dc .device-carry/s13f/llamacpp-bench.xz > /tmp/llamacpp-bench; chmod +x /tmp/llamacpp-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); new $(cat .device-carry/s17f/COMMIT); s16d $(cat .device-carry/s16d/COMMIT)"
G=/tmp/v2l.gguf
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
timeout 90 /tmp/llamacpp-bench -m $G -p 512 -n 0 -t 16 -r 3 > $E/llama.out 2> $E/llama.err; log "llama rc $? $(grep -o '"avg_ts":[0-9.]*' $E/llama.out | tr '\n' ' ')"
p() { local tag=$1 b=$2 rules=$3; timeout 90 $b prefill --model $G --rules $rules --prompt-len 512 --threads 16 --json > $E/pre_$tag.$r.$(basename $rules).out 2> $E/pre_$tag.$r.err
  log "prefill $tag $rules rc $? $(grep -o '"tokens_per_s":[0-9.]*' $E/pre_$tag.$r.$(basename $rules).out | head -1)"; }
for r in 1 2; do
  p new $B/kt-bench cpu; p s16d $S/kt-bench cpu
  p new $B/kt-bench rules/deepseek-v2-lite-hybrid.yaml; p s16d $S/kt-bench rules/deepseek-v2-lite-hybrid.yaml
done
rm -f $G
