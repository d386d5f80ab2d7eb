#!/usr/bin/env bash
# Session 35 call D: the decode against the new probe again (another instance): V3 6-layer file with the shipped
# hybrid rules twice and the int4 GPU-prefill rules (decode_resident) between, V2-Lite once; moe V3 --ceiling.
set -uo pipefail
C=$OUT/d; mkdir -p $C; trap 'cd $OUT && tar czf d.tgz d && rm -rf d' EXIT
N=/tmp/kt-d; mkdir -p $N; tar xJf .device-carry/s35/bin.tar.xz -C $N; chmod +x $N/*
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $C/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat .device-carry/s35/COMMIT)"
timeout 60 $N/kt-bench machine --threads 16 --json > $C/machine.json 2> $C/machine.err; log "machine rc $? $(cat $C/machine.json)"
moe() { # tag shape seconds
  local s0=$SECONDS
  timeout 200 $N/kt-bench moe --shape $2 --format q4_k --tokens 1 --threads 16 --seconds $3 --ceiling --json \
    > $C/moe_$1.jsonl 2> $C/moe_$1.err
  log "moe $1 rc $? wall $((SECONDS-s0))s"
  python3 - $C/moe_$1.jsonl <<'PY' | tee -a $C/summary.txt
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    print("  %-36s %.4f ms  %6.1f GB/s  start %3.0f%% (probe %.1f, fastest pass %.1f)  beside %s  of ceiling %s  probes %s" % (
        r.get("read_ceiling") or "operator", r["ms_per_call"], r["weight_gbps"], 100 * r["bandwidth_fraction"],
        r["dram_gbps"], r["dram_gbps_best_pass"],
        "%.0f%%" % (100 * r["bandwidth_fraction_paired"]) if r.get("bandwidth_fraction_paired") else "-",
        "%.0f%%" % (100 * r["of_read_ceiling"]) if r.get("of_read_ceiling") else "-",
        "%.0f-%.0f (%d)" % (min(r["dram_gbps_around"]), max(r["dram_gbps_around"]), len(r["dram_gbps_around"]))))
PY
}
J='"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"decode_bound_fraction_paired":[0-9.]*\|"experts_per_moe_layer_ms":[0-9.]*\|"gpu_between_moe_ms":[0-9.]*\|"moe_layer_bound_fraction_around":[0-9.]*\|"routed_bandwidth_fraction_around":[0-9.]*\|"around_repetitions":[^]]*\|"samples":[^]]*'
dec() { # tag rules
  local s0=$SECONDS
  timeout 150 $N/kt-bench decode --model $G --rules rules/$2 --prompt-len 1024 --gen-len 128 \
    --threads 16 --json --repetitions 3 > $C/dec_$1.out 2> $C/dec_$1.err
  log "decode $1 rc $? wall $((SECONDS-s0))s $(grep -o "$J" $C/dec_$1.out | tr '\n' ' ')"
}
G=/tmp/v3_6.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v3 --layers 6 --out $G --threads 16 > $C/gen_v3.log 2>&1; log "gen v3 rc $? $(tail -1 $C/gen_v3.log)"
dec v3h_1 deepseek-v3-hybrid.yaml
dec v3g4 gpu-prefill/deepseek-v3-int4-hybrid.yaml
dec v3h_2 deepseek-v3-hybrid.yaml
rm -f $G
moe v3 deepseek-v3 8
G=/tmp/v2l.gguf
timeout 120 $N/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $C/gen_v2l.log 2>&1; log "gen v2l rc $? $(tail -1 $C/gen_v2l.log)"
dec v2lh deepseek-v2-lite-hybrid.yaml
rm -f $G
log done
