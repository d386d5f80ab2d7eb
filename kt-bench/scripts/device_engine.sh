#!/usr/bin/env bash
# One device call: llama.cpp, kt's CPU engine and (when kt-bench was built with `--features
# cuda` and the machine has a GPU) kt's hybrid executor, all on the SAME synthetic GGUF.
# Builds nothing; binaries carried in $BIN (default .device-carry):
#   kt-bench        (cargo build -p kt-bench --release [--features cuda])
#   llamacpp-bench  (kt-bench/peers/llamacpp_bench/build.sh: llama.cpp's pp/tg tests over
#                    a static libllama, AVX512/VNNI/BF16, no OpenMP)
#   tests/*         optional GPU test binaries, run first with KT_REQUIRE_GPU=1 when TESTS=1
# Steps (each bounded by `timeout` and the budget; later ones only run while time is left):
#   1. kt-bench gen-gguf --preset deepseek-v2-lite (all 27 layers, Q4_K_M-like mix)
#   2. llamacpp-bench -p 1024 -n 128 -t THREADS on it
#   3. kt-bench prefill --prompt-len 1024 and decode --gen-len 128, --threads THREADS --json
#      --svg, with the cpu rules; with HYBRID=1 also prefill with the GPU-prefill rules
#      (rules/gpu-prefill/) and decode with the hybrid rules
#   4. the same for a DeepSeek-V3-shaped file of V3_LAYERS layers (3 dense + MoE layers),
#      prompt V3_PROMPT, 64 generated tokens; with V3_SLOPE_LAYERS, again for a file of that
#      many layers (tag v3s), so per-MoE-layer costs follow from the difference
# Results under $OUT/engine/: NAME.out (stdout: one JSON object per kt run, llama-bench's
# table), NAME.err, *.svg, tests/*.log and summary.txt (what ran, how long, exit status);
# all of it also packed into $OUT/engine.tgz.
# Env: THREADS (16), BUDGET_S (330), V2L (1; 0 skips the V2-Lite file), V3_LAYERS (5; 0 skips), V3_SLOPE_LAYERS (unset), V3_PROMPT (1024), CROSSOVER (unset: set, the
# hybrid prefill runs also measure the GPU/CPU experts crossover), HYBRID (1 when
# kt-bench has cuda and nvidia-smi sees a GPU), TESTS (1), TMP (/tmp).
set -uo pipefail
bin=${BIN:-.device-carry}
threads=${THREADS:-16}
budget=${BUDGET_S:-330}
v3_layers=${V3_LAYERS:-5}
v3_prompt=${V3_PROMPT:-1024}
tmp=${TMP:-/tmp}
root=${OUT:-/tmp/kt-out}
out=$root/engine
mkdir -p "$out/tests"
summary="$out/summary.txt"
: > "$summary"

# note, left, step (the budgeted runs)
source "$(dirname "${BASH_SOURCE[0]}")/lib/steps.sh"

pack() { tar czf "$root/engine.tgz" -C "$root" engine; }
trap pack EXIT

for b in kt-bench llamacpp-bench; do
    if [ ! -x "$bin/$b" ]; then note "missing $bin/$b"; exit 1; fi
done
if [ -z "${HYBRID:-}" ]; then
    HYBRID=0
    if nvidia-smi -L >/dev/null 2>&1 && grep -aq 'no CUDA driver' "$bin/kt-bench"; then HYBRID=1; fi
fi
note "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cpus; threads $threads; budget ${budget}s; hybrid $HYBRID"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1

if [ "${TESTS:-1}" != 0 ] && [ -d "$bin/tests" ]; then
    for t in "$bin"/tests/*; do
        [ -x "$t" ] || continue
        name=$(basename "$t")
        l=$(left)
        if [ "$l" -lt 90 ]; then note "test $name: skipped (${l}s left)"; continue; fi
        t0=$SECONDS
        KT_REQUIRE_GPU=1 timeout 120 "$t" --test-threads 1 > "$out/tests/$name.log" 2>&1
        rc=$?
        note "test $name: rc $rc in $((SECONDS - t0)) s; $(grep -E '^test result' "$out/tests/$name.log" | tail -1)"
    done
fi

# engine MODEL_TAG GGUF PROMPT GEN LLAMA_REPS: llama.cpp, then kt cpu, then kt hybrid
engine() {
    local tag=$1 gguf=$2 prompt=$3 gen=$4 reps=$5 rules_name=$6
    step "llamacpp_$tag" 150 "$bin/llamacpp-bench" -m "$gguf" -p "$prompt" -n "$gen" -t "$threads" -r "$reps"
    step "kt_prefill_$tag" 120 "$bin/kt-bench" prefill --model "$gguf" --prompt-len "$prompt" \
        --threads "$threads" --json --svg "$out/kt_prefill_$tag.svg"
    step "kt_decode_$tag" 90 "$bin/kt-bench" decode --model "$gguf" --prompt-len 32 --gen-len "$gen" \
        --threads "$threads" --json --svg "$out/kt_decode_$tag.svg"
    if [ "$HYBRID" = 1 ]; then
        step "hybrid_prefill_$tag" 180 "$bin/kt-bench" prefill --model "$gguf" \
            --rules "rules/gpu-prefill/$rules_name-hybrid.yaml" --prompt-len "$prompt" \
            --threads "$threads" --json --svg "$out/hybrid_prefill_$tag.svg" ${CROSSOVER:+--crossover}
        step "hybrid_decode_$tag" 120 "$bin/kt-bench" decode --model "$gguf" \
            --rules "rules/$rules_name-hybrid.yaml" --prompt-len 32 --gen-len "$gen" \
            --threads "$threads" --json --svg "$out/hybrid_decode_$tag.svg"
    fi
}

v2=$tmp/kt-v2l.gguf
if [ "${V2L:-1}" != 0 ] && step gen_v2l 150 "$bin/kt-bench" gen-gguf --preset deepseek-v2-lite --out "$v2" --threads "$threads"; then
    engine v2l "$v2" 1024 128 2 deepseek-v2-lite
fi
rm -f "$v2"

# v3_file TAG LAYERS: one V3-shaped file through every engine
v3_file() {
    local tag=$1 layers=$2 v3=$tmp/kt-$1.gguf
    if [ "$(left)" -gt 150 ] && step "gen_$tag" 150 "$bin/kt-bench" gen-gguf --preset deepseek-v3 \
            --layers "$layers" --out "$v3" --threads "$threads"; then
        engine "$tag" "$v3" "$v3_prompt" 64 1 deepseek-v3
    fi
    rm -f "$v3"
}
if [ "$v3_layers" != 0 ]; then v3_file v3 "$v3_layers"; fi
# A second V3 file with fewer MoE layers: the difference of the two runs gives each engine's cost
# per MoE layer (llama.cpp reports no per-layer split), the basis of a labelled 61-layer estimate.
if [ -n "${V3_SLOPE_LAYERS:-}" ]; then v3_file v3s "$V3_SLOPE_LAYERS"; fi
note "total ${SECONDS}s"
