#!/usr/bin/env bash
# Session 25 call G (branch hybrid-int4 at COMMIT, the repack one projection per pool item, --features cuda): tests on the device (AMX, GPU), then the hybrid
# V2-Lite decode with the routed experts as stored (rules/deepseek-v2-lite-hybrid.yaml) and repacked to int4
# (rules/cpu-int4/deepseek-v2-lite-hybrid.yaml), separate processes taking turns.
set -uo pipefail
E=$OUT/g; mkdir -p $E; trap 'cd $OUT && tar czf g.tgz g && rm -rf g' EXIT
C=.device-carry/s25g; B=/tmp/kt-bin; mkdir -p $B && tar xJf $C/bin.tar.xz -C $B
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); $(cat $C/COMMIT)"
for t in hybrid_forward; do
  KT_REQUIRE_GPU=1 timeout 150 $B/tests/$t > $E/test_$t.txt 2>&1; log "test $t rc $? $(grep 'test result' $E/test_$t.txt | tail -1)"
done
grep -h "int4_amx experts: worst" $E/test_hybrid_forward.txt | tee -a $E/summary.txt
G=/tmp/v2l.gguf
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
for r in 1 2; do
  for v in gguf int4; do
    [ $((SECONDS-t0)) -gt 330 ] && continue
    R=rules/deepseek-v2-lite-hybrid.yaml; [ $v = int4 ] && R=rules/cpu-int4/deepseek-v2-lite-hybrid.yaml
    /usr/bin/time -f "%e s %M KB" -o $E/dec_${v}_$r.time timeout 200 $B/kt-bench decode --model $G --rules $R --prompt-len 1024 --gen-len 128 --threads 16 --json --repetitions 3 > $E/dec_${v}_$r.out 2> $E/dec_${v}_$r.err
    log "dec $v $r rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*\|"prefill_tokens_per_s":[0-9.]*' $E/dec_${v}_$r.out | head -4 | tr '\n' ' ') $(cat $E/dec_${v}_$r.time)"
  done
done
rm -f $G
log done
