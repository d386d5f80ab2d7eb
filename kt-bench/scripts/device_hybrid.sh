#!/usr/bin/env bash
# One device call: the hybrid executor (GPU + CPU routed experts) next to the CPU engine on
# the SAME synthetic GGUF. Builds nothing; binaries carried in $BIN (.device-carry/hybrid):
#   kt-bench   (cargo build --release -p kt-bench --features cuda)
#   tests/*    optional: GPU test binaries (cargo test --release --no-run --features cuda:
#              kt-kernels' cuda_*, kt-model's hybrid_forward), run first with KT_REQUIRE_GPU=1
#              when present and TESTS is not 0
# Steps (each bounded by `timeout` and the budget):
#   0. the test binaries, if any (output in tests/NAME.log)
#   1. kt-bench gen-gguf --preset deepseek-v2-lite (all 27 layers, Q4_K_M-like mix)
#   2. kt-bench prefill --prompt-len 1024 and decode --gen-len 128, --threads THREADS --json,
#      with --rules rules/deepseek-v2-lite-cpu.yaml AND rules/deepseek-v2-lite-hybrid.yaml
# Results under $OUT/hybrid/: NAME.out (stdout: one JSON object per run), NAME.err,
# summary.txt (what ran, how long, exit status), nvidia-smi.txt; all of it also packed into
# $OUT/hybrid.tgz.
#   3. with LONG=1: decode --prompt-len 1024 --gen-len 64, both rules (attention over a long cache)
# Env: THREADS (16), BUDGET_S (total wall budget, 290), TESTS (1), LONG (0), TMP (/tmp), BIN.
set -uo pipefail
bin=${BIN:-.device-carry/hybrid}
threads=${THREADS:-16}
budget=${BUDGET_S:-290}
run_tests=${TESTS:-1}
tmp=${TMP:-/tmp}
root=${OUT:-/tmp/kt-out}
out=$root/hybrid
mkdir -p "$out/tests"
summary="$out/summary.txt"
: > "$summary"

# note, left, step (the budgeted runs)
STEP_MIN_LEFT=15
source "$(dirname "${BASH_SOURCE[0]}")/lib/steps.sh"

pack() { tar czf "$root/hybrid.tgz" -C "$root" hybrid; }
trap pack EXIT

if [ ! -x "$bin/kt-bench" ]; then note "missing $bin/kt-bench"; exit 1; fi
note "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cpus; threads $threads; budget ${budget}s"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1

if [ "$run_tests" != 0 ] && [ -d "$bin/tests" ]; then
    # the hybrid executor's own tests first, then the other kernels' (regressions)
    declare -A seen
    for t in "$bin"/tests/hybrid_* "$bin"/tests/cuda_linear "$bin"/tests/*; do
        name=$(basename "$t")
        [ -x "$t" ] && [ -z "${seen[$name]:-}" ] || continue
        seen[$name]=1
        l=$(left)
        if [ "$l" -lt 60 ]; then note "test $name: skipped (${l}s left)"; continue; fi
        t0=$SECONDS
        KT_REQUIRE_GPU=1 timeout 120 "$t" --test-threads 1 --nocapture > "$out/tests/$name.log" 2>&1
        rc=$?
        note "test $name: rc $rc in $((SECONDS - t0)) s; $(grep -E '^test result' "$out/tests/$name.log" | tail -1)"
    done
fi

gguf=$tmp/kt-v2l-hybrid.gguf
if step gen_v2l 120 "$bin/kt-bench" gen-gguf --preset deepseek-v2-lite --out "$gguf" --threads "$threads"; then
    for rules in cpu hybrid; do
        file=rules/deepseek-v2-lite-$rules.yaml
        step "prefill_$rules" 90 "$bin/kt-bench" prefill --model "$gguf" --rules "$file" \
            --prompt-len 1024 --threads "$threads" --json
        step "decode_$rules" 90 "$bin/kt-bench" decode --model "$gguf" --rules "$file" \
            --prompt-len 32 --gen-len 128 --threads "$threads" --json
    done
    if [ "${LONG:-0}" != 0 ]; then
        # decode after a long prompt: attention over 1024 cached positions
        for rules in cpu hybrid; do
            step "decode_long_$rules" 90 "$bin/kt-bench" decode --model "$gguf" \
                --rules "rules/deepseek-v2-lite-$rules.yaml" --prompt-len 1024 --gen-len 64 \
                --threads "$threads" --json
        done
    fi
fi
rm -f "$gguf"
note "total ${SECONDS}s"
