#!/usr/bin/env bash
# Session 14 call C: where do the two hybrid_graph tests hang with FLAG_WAITS (0c4debc)? The test binary with phase
# prints (test-side only: "PH <s> <thread> <phase>"), run with --nocapture, 45 s limit (the graph's ready wait
# gives up after 30 s), until 230 s; on a hang: each thread's state, syscall, kernel stack; perf if present.
set -uo pipefail
E=$OUT/c; mkdir -p $E/hang; trap 'cd $OUT && tar czf c.tgz c && rm -rf c' EXIT
B=/tmp/kt-bin; mkdir -p $B; xz -dc .device-carry/s14c/hybrid_graph_diag.xz > $B/hg; chmod +x $B/hg
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(nvidia-smi -L | head -1); tools: $(which perf gdb eu-stack pstack 2>&1 | tr '\n' ' ')"
export KT_TEST_FIXTURES=kt-kernels/tests/fixtures KT_REQUIRE_GPU=1
one() { # tag
  local out=$E/hang/$1.txt
  $B/hg --nocapture > $out 2>&1 & local pid=$!
  for i in $(seq 1 450); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
  if kill -0 $pid 2>/dev/null; then
    log "$1 HANG"
    for t in /proc/$pid/task/*; do
      echo "== $t $(cat $t/comm) $(cut -d' ' -f3 $t/stat) wchan=$(cat $t/wchan 2>/dev/null) syscall=$(cat $t/syscall 2>/dev/null)"
      cat $t/stack 2>/dev/null | head -12
    done > $E/hang/$1.proc
    for k in 1 2 3; do for t in /proc/$pid/task/*; do echo "$k $(cat $t/comm) $(cut -d' ' -f3,14,15 $t/stat)"; done; sleep 1; done > $E/hang/$1.ticks
    cat /proc/$pid/maps > $E/hang/$1.maps
    nvidia-smi > $E/hang/$1.smi 2>&1
    if command -v perf >/dev/null; then timeout 10 perf record -g -p $pid -o $E/hang/$1.perf -- sleep 2 > /dev/null 2>&1; perf report -i $E/hang/$1.perf --stdio 2>/dev/null | head -80 > $E/hang/$1.perf.txt; fi
    kill -9 $pid; wait $pid 2>/dev/null
  else wait $pid; log "$1 rc $? $(grep -E '^test result' $out | tail -1)"; fi
}
r=0
while [ $((SECONDS-t0)) -lt 230 ]; do r=$((r+1)); one r$r; done
log "loop: $(grep -c ' rc 0' $E/summary.txt) ok $(grep -c 'HANG' $E/summary.txt) hung $(grep -c ' rc [1-9]' $E/summary.txt) failed"
