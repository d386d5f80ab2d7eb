#!/usr/bin/env bash
# Session 12: compute-sanitizer memcheck of the decode graph kept across a cleared cache (hybrid_graph's
# a_cleared_cache_keeps_its_graph, binary of aa575b7), with the time F1 did not give it.
set -uo pipefail
E=$OUT/mc; mkdir -p $E; trap 'cd $OUT && tar czf mc.tgz mc && rm -rf mc' EXIT
xz -dc .device-carry/s12mc/hybrid_graph.xz > /tmp/hybrid_graph; chmod +x /tmp/hybrid_graph
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
s0=$SECONDS
KT_REQUIRE_GPU=1 timeout 420 $san --tool memcheck --error-exitcode 9 /tmp/hybrid_graph --test-threads=1 a_cleared_cache_keeps_its_graph > $E/memcheck_graph.txt 2>&1
echo "rc $? after $((SECONDS-s0)) s; $(grep 'ERROR SUMMARY' $E/memcheck_graph.txt | tail -1); $(grep -o 'test result: [a-z]*\. [0-9]* passed; [0-9]* failed' $E/memcheck_graph.txt)" | tee $E/summary.txt
