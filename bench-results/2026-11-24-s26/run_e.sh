#!/usr/bin/env bash
# Session 26 call E (main at COMMIT): the CPU engine with the routed experts repacked to int4 at load
# (rules/cpu-int4/deepseek-v2-lite-cpu.yaml) against the experts as stored (rules/deepseek-v2-lite-cpu.yaml), all on the
# CPU, DeepSeek-V2-Lite 27 layers, 16 threads, separate processes taking turns; the new CPU test on the AMX machine.
set -uo pipefail
E=$OUT/e; mkdir -p $E; trap 'cd $OUT && tar czf e.tgz e && rm -rf e' EXIT
C=.device-carry/s26e; B=/tmp/kt-bin; mkdir -p $B && tar xJf $C/bin.tar.xz -C $B
xz -dc $C/kt-bench.xz > $B/kt-bench; chmod +x $B/kt-bench
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat $C/COMMIT)"
timeout 120 $B/tests/cpu_repacked_experts --nocapture > $E/test_cpu_repacked_experts.txt 2>&1
log "test cpu_repacked_experts rc $? $(grep -h 'worst rows\|from the as\|test result' $E/test_cpu_repacked_experts.txt | tr '\n' ' ')"
G=/tmp/v2l.gguf
timeout 90 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
J='"gpu_load_s":[0-9.]*\|"weights_s":[0-9.]*\|"decode_tokens_per_s":[0-9.]*\|"dram_gbps":[0-9.]*\|"prefill_tokens_per_s":[0-9.]*'
dec() { # tag rules
  [ $((SECONDS-t0)) -gt 480 ] && { log "skip dec $1"; return; }
  /usr/bin/time -f "%e s %M KB" -o $E/dec_$1.time timeout 150 $B/kt-bench decode --model $G --rules $2 \
    --prompt-len 128 --gen-len 64 --threads 16 --json --repetitions 3 > $E/dec_$1.out 2> $E/dec_$1.err
  log "dec $1 rc $? $(grep -o "$J" $E/dec_$1.out | head -5 | tr '\n' ' ') $(cat $E/dec_$1.time)"
}
S=rules/deepseek-v2-lite-cpu.yaml; I=rules/cpu-int4/deepseek-v2-lite-cpu.yaml
dec stored1 $S
dec int4_1 $I
dec stored2 $S
dec int4_2 $I
python3 - $E <<'PY' | tee -a $E/summary.txt
import json, sys, glob
for f in sorted(glob.glob(sys.argv[1] + '/dec_*.out')):
    try: r = json.load(open(f))
    except Exception as e: print(f, e); continue
    d = r['split'].get('decode') or {}
    print(f.split('/')[-1], 'decode %.2f tok/s' % r['decode_tokens_per_s'], 'prefill %.1f' % r['prefill_tokens_per_s'],
          {k: d.get(k) for k in ('routed_gbps', 'routed_bandwidth_fraction', 'routed_bytes_per_token')}, 'dram %.1f' % r['dram_gbps'])
PY
rm -f $G
log done
