#!/usr/bin/env bash
# THP probe: kt-bench moe with the expert weights madvised MADV_HUGEPAGE (KT_THP=1) or not, interleaved.
set -uo pipefail
E=$OUT/thp; mkdir -p $E; trap 'cd $OUT && tar czf thp.tgz thp' EXIT
D=.device-carry/thp8; t0=$SECONDS
log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
{ uname -a; for f in enabled defrag shmem_enabled khugepaged/defrag; do echo "$f: $(cat /sys/kernel/mm/transparent_hugepage/$f)"; done; grep -i huge /proc/meminfo; df -T /tmp . | cat; grep -m1 'model name' /proc/cpuinfo; nproc; systemd-detect-virt 2>/dev/null; grep -c hypervisor /proc/cpuinfo; free -g; } > $E/env.txt 2>&1
m() { # tag shape fmt tokens thp
  if [ "$5" = on ]; then export KT_THP=1; else unset KT_THP; fi
  ( sleep 6; grep AnonHugePages /proc/meminfo > $E/$1.ahp ) &
  timeout 60 $D/kt-bench moe --shape $2 --format $3 --tokens $4 --threads 16 --json --seconds 2 > $E/$1.out 2> $E/$1.err
  rc=$?; wait; log "$1 rc $rc $(cat $E/$1.ahp | tr -s ' ') $(grep -o '"ms_per_call":[0-9.]*\|"weight_gbps":[0-9.]*\|"dram_gbps":[0-9.]*' $E/$1.out | tr '\n' ' ')"; }
for r in 1 2; do
  for t in off on; do m v2l_t1_${t}_$r deepseek-v2-lite q4_k 1 $t; m v3_t1_${t}_$r deepseek-v3 q4_k 1 $t; done
done
for t in on off; do m v2l_512_${t} deepseek-v2-lite q4_k 512 $t; done
for t in on off; do [ $((SECONDS-t0)) -lt 300 ] && m v3_512_${t} deepseek-v3 q4_k 512 $t; done
