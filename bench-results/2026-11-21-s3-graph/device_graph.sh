#!/usr/bin/env bash
# One device call for branch `graph` (copy of kt-bench/scripts/device_hybrid.sh, trimmed):
# GPU tests, then decode on ONE synthetic V2-Lite GGUF: CPU rules, the hybrid binary of main
# before this branch ($BIN/old/kt-bench) and the new one ($BIN/kt-bench), same file, same call.
set -uo pipefail
carry=${BIN:-.device-carry/graph}
bin=${TMP:-/tmp}/graph-bin
mkdir -p "$bin" && tar xJf "$carry/bins.tar.xz" -C "$bin"
threads=${THREADS:-16}
budget=${BUDGET_S:-200}
tmp=${TMP:-/tmp}
root=${OUT:-/tmp/kt-out}
out=$root/graph
mkdir -p "$out/tests"
summary="$out/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }
left() { echo $((budget - SECONDS)); }
step() {
    local name=$1 limit=$2; shift 2
    local l; l=$(left)
    if [ "$l" -lt 10 ]; then note "$name: skipped (${l}s of the budget left)"; return 1; fi
    [ "$limit" -gt "$l" ] && limit=$l
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.out" 2>"$out/$name.err"
    local rc=$?
    note "$name: rc $rc in $((SECONDS - t0)) s (limit ${limit}s): $*"
    return $rc
}
note "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cpus; threads $threads; budget ${budget}s"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
for name in ${TESTS_LIST:-cuda_pinned cuda_linear hybrid_pipeline hybrid_forward cuda_runtime}; do
    t=$bin/tests/$name
    [ -x "$t" ] || { note "test $name: missing"; continue; }
    l=$(left); if [ "$l" -lt 90 ]; then note "test $name: skipped (${l}s left)"; continue; fi
    t0=$SECONDS
    KT_REQUIRE_GPU=1 timeout 90 "$t" --test-threads 1 --nocapture > "$out/tests/$name.log" 2>&1
    note "test $name: rc $? in $((SECONDS - t0)) s; $(grep -E '^test result' "$out/tests/$name.log" | tail -1)"
done
gguf=$tmp/kt-v2l-graph.gguf
if step gen_v2l 60 "$bin/kt-bench" gen-gguf --preset deepseek-v2-lite --out "$gguf" --threads "$threads"; then
    dec() { # name binary rules prompt gen (skipped when the binary is not carried)
        [ -x "$2" ] || { note "$1: no $2"; return 0; }
        step "$1" 60 "$2" decode --model "$gguf" --rules "rules/deepseek-v2-lite-$3.yaml" \
            --prompt-len "$4" --gen-len "$5" --threads "$threads" --json
    }
    dec decode_cpu "$bin/kt-bench" cpu 32 128
    dec decode_hybrid_old "$bin/old/kt-bench" hybrid 32 128
    dec decode_hybrid_new "$bin/kt-bench" hybrid 32 128
    dec decode_long_hybrid_new "$bin/kt-bench" hybrid 1024 64
    dec decode_long_hybrid_old "$bin/old/kt-bench" hybrid 1024 64
    step prefill_hybrid_new 40 "$bin/kt-bench" prefill --model "$gguf" \
        --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len 1024 --threads "$threads" --json
fi
rm -f "$gguf"
for f in "$out"/decode_*.out; do
    [ -s "$f" ] && note "$(basename "$f"): $(grep -o '"decode_[a-z_]*tokens_per_s":[0-9.]*' "$f" | tr '\n' ' ')"
done
note "total ${SECONDS}s"
