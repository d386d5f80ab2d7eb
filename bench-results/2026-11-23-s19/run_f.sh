#!/usr/bin/env bash
# Session 19 call F: main at COMMIT (s19f, --features cuda: one K chunk over the AMX GEMM's call-wide records; the
# GGUF-native MoE's SiLU on AVX512) against s18h (80a52b3, session 18's final kernels): every GPU / hybrid test and
# the CPU / AMX / MoE tests of s19f; the V3 / V2-Lite Q4_K MoE at 512 tokens in separate processes taking turns
# (h, f, f, h, h, f); the MoE at one token over 16 / 15 / 14 threads in one process; the hybrid V2-Lite decode at
# 16 / 15 / 14 threads (separate processes, two rounds).
set -uo pipefail
E=$OUT/f; mkdir -p $E/tests; trap 'cd $OUT && tar czf f.tgz f && rm -rf f' EXIT
for b in s18h s19f; do mkdir -p /tmp/$b && tar xJf .device-carry/$b/bin.tar.xz -C /tmp/$b; done
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); h $(cat .device-carry/s18h/COMMIT) f $(cat .device-carry/s19f/COMMIT)"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures KT_REQUIRE_GPU=1
for n in $(ls /tmp/s19f/tests); do
  timeout 150 /tmp/s19f/tests/$n --test-threads 16 > $E/tests/$n.txt 2>&1; log "test $n rc $? $(grep -E '^test result' $E/tests/$n.txt | tail -1)"; done
grep -h -E "FAILED|panicked" $E/tests/*.txt | head -20
unset KT_REQUIRE_GPU
for r in h f f h h f; do
  [ $((SECONDS-t0)) -gt 330 ] && continue
  B=/tmp/s19$r; [ $r = h ] && B=/tmp/s18h
  timeout 60 $B/kt-bench moe --shape deepseek-v3 --format q4_k --tokens 512 --threads 16 --seconds 2 --json >> $E/moe_$r.jsonl 2>>$E/errors.txt
  log "moe v3 $r rc $? $(tail -1 $E/moe_$r.jsonl | grep -o '"ms_per_call":[0-9.]*')"
  timeout 60 $B/kt-bench moe --shape deepseek-v2-lite --format q4_k --tokens 512 --threads 16 --seconds 1 --json >> $E/moe_$r.jsonl 2>>$E/errors.txt
  log "moe v2l $r rc $? $(tail -1 $E/moe_$r.jsonl | grep -o '"ms_per_call":[0-9.]*')"
done
B=/tmp/s19f
timeout 60 $B/kt-bench moe --shape deepseek-v3 --format q4_k --tokens 1 --threads 16,15,14 --seconds 1 --json > $E/moe_t1_threads.jsonl 2>>$E/errors.txt
log "moe v3 t1 threads rc $? $(grep -o '"threads":[0-9]*\|"ms_per_call":[0-9.]*' $E/moe_t1_threads.jsonl | tr '\n' ' ')"
timeout 60 $B/kt-bench moe --shape deepseek-v2-lite --format q4_k --tokens 1 --threads 16,15,14 --seconds 1 --json >> $E/moe_t1_threads.jsonl 2>>$E/errors.txt
log "moe v2l t1 threads rc $? $(grep -o '"threads":[0-9]*\|"ms_per_call":[0-9.]*' $E/moe_t1_threads.jsonl | tail -6 | tr '\n' ' ')"
G=/tmp/v2l.gguf
timeout 60 $B/kt-bench gen-gguf --preset deepseek-v2-lite --out $G --threads 16 > $E/gen.log 2>&1; log "gen rc $?"
for r in 1 2; do for th in 16 15 14; do
  [ $((SECONDS-t0)) -gt 540 ] && continue
  timeout 50 $B/kt-bench decode --model $G --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --gen-len 128 --threads $th --json --repetitions 5 > $E/dec_${th}_$r.out 2> $E/dec_${th}_$r.err
  log "dec threads $th #$r rc $? $(grep -o '"decode_tokens_per_s":[0-9.]*\|"decode_bound_fraction":[0-9.]*\|"dram_gbps":[0-9.]*' $E/dec_${th}_$r.out | head -3 | tr '\n' ' ')"
done; done
log done
