#!/usr/bin/env bash
# Session 17 call F (main at COMMIT = s17f, --features cuda; s16d = session 16's final binary): 1) every CPU, AMX, MoE,
# CUDA and hybrid test binary; 2) V2-Lite q5_k mix (down Q5_1) at one token, s17f against s16d taking turns (the
# one-token Q4_1 / Q5_1 path back on the AVX2 kernel); 3) the hybrid V2-Lite decode (27 layers, prompt 1024, gen 128),
# s17f against s16d in separate processes taking turns, two rounds: the main job with this session's kernels.
set -uo pipefail
E=$OUT/f; mkdir -p $E/tests; trap 'cd $OUT && tar czf f.tgz f && rm -rf f' EXIT
B=/tmp/kt; mkdir -p $B && tar xJf .device-carry/s17f/bin.tar.xz -C $B
S=/tmp/s16d; mkdir -p $S && tar xJf .device-carry/s16d/bin.tar.xz -C $S
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); new $(cat .device-carry/s17f/COMMIT); s16d $(cat .device-carry/s16d/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures KT_REQUIRE_GPU=1
for n in $(ls $B/tests); do
  timeout 90 $B/tests/$n --test-threads 16 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
grep -h -E "FAILED|panicked" $E/tests/*.txt | head -20
unset KT_REQUIRE_GPU
m() { local tag=$1 b=$2; shift 2; timeout 60 $b moe "$@" --threads 16 --json 2>>$E/moe_err.txt | sed "s/^{/{\"tag\":\"$tag\",/" >> $E/moe.jsonl; log "moe $tag $* rc $?"; }
for r in 1 2; do
  m new $B/kt-bench --shape deepseek-v2-lite --format q5_k --tokens 1 --seconds 1
  m s16d $S/kt-bench --shape deepseek-v2-lite --format q5_k --tokens 1 --seconds 1
done
G=/tmp/v2l.gguf
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
d() { local tag=$1 b=$2; timeout 80 $b decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 3 > $E/dec_$tag.$r.out 2> $E/dec_$tag.$r.err
  log "dec $tag rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*' $E/dec_$tag.$r.out | head -3 | tr '\n' ' ')"; }
for r in 1 2; do d new $B/kt-bench; d s16d $S/kt-bench; done
rm -f $G
python3 - $E <<'PY' | tee $E/table.txt
import json, sys
E = sys.argv[1]
for l in open(E + '/moe.jsonl'):
    r = json.loads(l)
    print('moe', r['tag'], r['shape'], r['gate'], r['down'], 'T=%d' % r['tokens'], r['isa'], '%.3f ms' % r['ms_per_call'], 'bwfrac %.3f' % r['bandwidth_fraction'], 'dram %.1f' % r['dram_gbps'])
PY
