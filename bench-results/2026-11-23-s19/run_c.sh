#!/usr/bin/env bash
# Session 19 call C (x19b build with MoE phase timers): where the V3 Q4_K 512-token MoE call's time goes, by phase
# (KT_X_PHASES: ms per call, warm-up calls included), with X_KNOB skipping kernel stages (1 products, 2 scaling,
# 4 unpacking, 8 the SiLU loop; results wrong on purpose). Separate processes.
set -uo pipefail
E=$OUT/c; mkdir -p $E; trap 'cd $OUT && tar czf c.tgz c && rm -rf c' EXIT
B=/tmp/kt; mkdir -p $B && tar xJf .device-carry/s19c/bin.tar.xz -C $B
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s19c/COMMIT)"
export KT_X_PHASES=1
i=0
for v in 0 7 15 8 0 7; do i=$((i+1))
  [ $((SECONDS-t0)) -gt 500 ] && continue
  KT_X_KNOB=$v timeout 60 $B/kt-bench moe --shape deepseek-v3 --format q4_k --tokens 512 --threads 16 --json > $E/moe_${i}_v$v.json 2>$E/moe_${i}_v$v.err
  log "v3 v$v rc $? $(python3 -c "import json; d=json.load(open('$E/moe_${i}_v$v.json')); print(d['ms_per_call'])" 2>&1 | tail -1) $(grep x_phases $E/moe_${i}_v$v.err)"
done
for v in 0 7; do
  KT_X_KNOB=$v timeout 60 $B/kt-bench moe --shape deepseek-v2-lite --format q4_k --tokens 512 --threads 16 --json > $E/v2_v$v.json 2>$E/v2_v$v.err
  log "v2lite v$v rc $? $(python3 -c "import json; d=json.load(open('$E/v2_v$v.json')); print(d['ms_per_call'])" 2>&1 | tail -1) $(grep x_phases $E/v2_v$v.err)"
done
log done
