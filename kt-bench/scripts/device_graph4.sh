#!/usr/bin/env bash
# One device call for branch `graph4` (from device_hybrid.sh): the GPU tests of the decode
# graph, then decode on ONE synthetic V2-Lite GGUF (27 layers): main's hybrid binary before
# this branch ($BIN/old/kt-bench) and the new one ($BIN/kt-bench: graph launches, with the
# eager pipelined and sequential rates of the same binary beside them), same file, same call;
# then, when nsys exists, a kernel-time profile of the new binary's graph decode (per node).
# Binaries come packed in $BIN/bins.tar.xz (kt-bench, old/kt-bench, tests/NAME).
# Env: BIN (.device-carry/graph4), NAME (graph4: the results folder under $OUT), THREADS (16),
# BUDGET_S (200), TESTS_LIST, REPS (2), LONG (1), NSYS (1), TMP. Reused by branch fuse4
# (NAME=fuse4).
set -uo pipefail
carry=${BIN:-.device-carry/graph4}
tmp=${TMP:-/tmp}
name=${NAME:-graph4}
bin=$tmp/$name-bin
mkdir -p "$bin" && tar xJf "$carry/bins.tar.xz" -C "$bin"
threads=${THREADS:-16}
budget=${BUDGET_S:-200}
root=${OUT:-/tmp/kt-out}
out=$root/$name
mkdir -p "$out/tests"
summary="$out/summary.txt"
: > "$summary"
STEP_MIN_LEFT=10
source "$(dirname "${BASH_SOURCE[0]}")/lib/steps.sh"
pack() { tar czf "$root/$name.tgz" -C "$root" "$name"; }
trap pack EXIT

note "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cpus; threads $threads; budget ${budget}s"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
for tname in ${TESTS_LIST:-hybrid_graph cuda_mla cuda_linear hybrid_pipeline hybrid_forward cuda_runtime cuda_pinned}; do
    t=$bin/tests/$tname
    [ -x "$t" ] || { note "test $tname: missing"; continue; }
    l=$(left); if [ "$l" -lt 100 ]; then note "test $tname: skipped (${l}s left)"; continue; fi
    t0=$SECONDS
    KT_REQUIRE_GPU=1 timeout 60 "$t" --test-threads 1 --nocapture > "$out/tests/$tname.log" 2>&1
    note "test $tname: rc $? in $((SECONDS - t0)) s; $(grep -E '^test result' "$out/tests/$tname.log" | tail -1)"
    grep -E "panicked|FAILED|failed" "$out/tests/$tname.log" | head -5 >> "$summary"
done
gguf=$tmp/kt-v2l-$name.gguf
if step gen_v2l 60 "$bin/kt-bench" gen-gguf --preset deepseek-v2-lite --out "$gguf" --threads "$threads"; then
    dec() { # name binary prompt gen
        step "$1" 60 "$2" decode --model "$gguf" --rules rules/deepseek-v2-lite-hybrid.yaml \
            --prompt-len "$3" --gen-len "$4" --threads "$threads" --json
    }
    # old and new alternate, REPS times each (the CPU experts' time varies from run to run)
    for r in $(seq 1 "${REPS:-2}"); do
        dec "decode_old_$r" "$bin/old/kt-bench" 32 128
        dec "decode_new_$r" "$bin/kt-bench" 32 128
    done
    [ "${LONG:-1}" != 0 ] && dec decode_long_new "$bin/kt-bench" 1024 64
    nsys=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
    if [ "${NSYS:-1}" != 0 ] && [ -n "$nsys" ]; then
        step nsys 70 "$nsys" profile --cuda-graph-trace=node --trace=cuda -o "$tmp/g4prof" -f true \
            "$bin/kt-bench" decode --model "$gguf" --rules rules/deepseek-v2-lite-hybrid.yaml \
            --prompt-len 32 --gen-len 32 --threads "$threads" --json
        step nsys_stats 40 "$nsys" stats --report cuda_gpu_kern_sum --report cuda_gpu_mem_time_sum \
            --format csv -o "$out/prof" "$tmp/g4prof.nsys-rep"
    else
        note "nsys: not found"
    fi
fi
rm -f "$gguf"
for f in "$out"/decode_*.out; do
    [ -s "$f" ] && note "$(basename "$f"): $(grep -o '"decode_[a-z_]*":[0-9.a-z]*' "$f" | tr '\n' ' ')"
done
note "total ${SECONDS}s"
