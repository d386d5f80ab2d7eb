#!/usr/bin/env bash
# Session 13 call D: does hybrid_graph hang (call C: both tests past 60 s once)? Runs the new test binary (8fca9b3,
# symbols kept) and session 12's (aa575b7) in turns, 2 test threads and 1, 30 s each; on a timeout it takes the
# threads' stacks with gdb (when present) and /proc before killing it.
set -uo pipefail
E=$OUT/d; mkdir -p $E; trap 'cd $OUT && tar czf d.tgz d && rm -rf d' EXIT
B=/tmp/hg; mkdir -p $B
for v in new base; do xz -dc .device-carry/s13hang/hybrid_graph_$v.xz > $B/$v; chmod +x $B/$v; done
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "gdb: $(which gdb eu-stack 2>&1 | tr '\n' ' ')"
export KT_REQUIRE_GPU=1
one() { # tag bin threads
  local out=$E/$1.txt
  $B/$2 --test-threads $3 > $out 2>&1 & local pid=$!
  for i in $(seq 1 300); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
  if kill -0 $pid 2>/dev/null; then
    log "$1 HANG"
    for t in /proc/$pid/task/*; do echo "$t $(cat $t/comm) $(cut -d' ' -f3 $t/stat) $(cat $t/wchan 2>/dev/null)"; done > $E/$1.proc
    command -v gdb >/dev/null && timeout 60 gdb -p $pid -batch -ex "thread apply all bt 25" > $E/$1.gdb 2>&1
    nvidia-smi > $E/$1.smi 2>&1
    kill -9 $pid; wait $pid 2>/dev/null
  else wait $pid; log "$1 rc $? $(grep -E '^test result' $out | tail -1)"; fi
}
r=0
while [ $((SECONDS-t0)) -lt 330 ]; do r=$((r+1))
  one new_t2_$r new 2; one base_t2_$r base 2; one new_t1_$r new 1; one base_t1_$r base 1
done
log done
