#!/usr/bin/env bash
# Session 34 call E: expert deferral A/B inside one process (KT_DEFER_AB=4:0,1,2: after the usual run,
# four rounds of graph decodes of the same 128 tokens with 0, 1 and 2 deferred choices in turn, a probe
# after each), so the instance's drift between processes cancels. V3 6-layer file: shipped hybrid rules
# (Q4_K CPU experts), int4 CPU experts, int4 GPU-prefill rules (decode_resident); V2-Lite: hybrid rules.
set -uo pipefail
E=$OUT/e; mkdir -p $E; trap 'cd $OUT && tar czf e.tgz e && rm -rf e' EXIT
N=/tmp/kt-e; mkdir -p $N; tar xJf .device-carry/s34/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s34/COMMIT)"
export KT_DEFER_AB=4:0,1,2
dec() { # tag rules [extra args]
  local tag=$1 rules=$2; shift 2; local s0=$SECONDS
  timeout 200 $N/kt-bench decode --model $G --rules rules/$rules "$@" --prompt-len 1024 --gen-len 128 \
    --threads 16 --json --repetitions 3 > $E/dec_$tag.out 2> $E/dec_$tag.err
  log "decode $tag rc $? wall $((SECONDS-s0))s"
  python3 - $E/dec_$tag.out <<'PY' | tee -a $E/summary.txt
import json, sys
j = json.load(open(sys.argv[1]))
for r in j.get("defer_ab", []):
    t = r["decode_graph_timeline"] or {}
    print("  defer %d: %.1f tok/s, experts %.3f + deferred %.3f ms, between %.1f us, probe after %.1f, per MoE layer %.3f" % (
        r["defer_experts"], r["decode_tokens_per_s"], t.get("experts_per_moe_layer_ms", 0), t.get("deferred_per_moe_layer_ms", 0),
        1e3 * t.get("gpu_between_moe_ms", 0), r["dram_gbps_after"], t.get("moe_layer_bound_fraction_around") or 0))
PY
}
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $E/gen_v3.log 2>&1; log "gen v3 rc $? $(tail -1 $E/gen_v3.log)"
dec h deepseek-v3-hybrid.yaml
dec i cpu-int4/deepseek-v3-hybrid.yaml
dec g4 gpu-prefill/deepseek-v3-int4-hybrid.yaml
rm -f $G
G=/tmp/v2l.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen_v2l.log 2>&1; log "gen v2l rc $? $(tail -1 $E/gen_v2l.log)"
dec v2l deepseek-v2-lite-hybrid.yaml
rm -f $G
log done
