#!/usr/bin/env bash
# One device call: the hybrid executor's GPU prefill experts (routed experts of long prompt
# chunks on the GPU, streamed per layer from pinned int4 slabs) next to the CPU-expert
# hybrid and the CPU engine, on the SAME synthetic V2-Lite GGUF. Builds nothing; binaries in
# $BIN (.device-carry/lwprefill):
#   kt-bench   (cargo build --release -p kt-bench --features cuda)
#   tests/*    GPU test binaries (cargo test --release --no-run --features cuda: kt-kernels'
#              cuda_moe_experts and cuda_w4a16, kt-model's hybrid_prefill and hybrid_forward),
#              run with KT_REQUIRE_GPU=1
#   rules/gpu-prefill/deepseek-v2-lite-hybrid.yaml (the rules with the prefill option)
# Steps, each bounded by `timeout` and the budget, in order of importance:
#   1. tests hybrid_prefill, cuda_moe_experts
#   2. kt-bench gen-gguf --preset deepseek-v2-lite (27 layers, Q4_K_M-like mix)
#   3. kt-bench prefill --prompt-len 1024 --crossover with the GPU-prefill rules: load (repack
#      time, int4 error), the pinned H2D bandwidth, prefill 128..2048 tokens with the GPU
#      experts forced on and off (the CPU-expert hybrid), one JSON object
#   4. kt-bench prefill --prompt-len 1024 and 2048, CPU rules (CPU-only engine)
#   5. regression tests cuda_w4a16 (launch on views), hybrid_forward
#   With CPU_LENS (e.g. "128 256 512 1024 2048"), step 4 runs those prompt lengths instead.
# Results under $OUT/gpu_prefill/ (few files: the device call returns only a handful):
# NAME.out (stdout; the CPU runs all append to prefill_cpu.out), err.log (every stderr),
# tests/*.log, summary.txt.
# Env: THREADS (16), BUDGET_S (total wall budget, 200), TESTS (1), CPU_LENS, TMP (/tmp), BIN.
set -uo pipefail
bin=${BIN:-.device-carry/lwprefill}
threads=${THREADS:-16}
budget=${BUDGET_S:-200}
tmp=${TMP:-/tmp}
root=${OUT:-/tmp/kt-out}
out=$root/gpu_prefill
mkdir -p "$out/tests"
summary="$out/summary.txt"
: > "$summary"

# note, left, step (the budgeted runs; every stderr into err.log)
STEP_MIN_LEFT=10
STEP_ERR=err.log
source "$(dirname "${BASH_SOURCE[0]}")/lib/steps.sh"

run_test() {
    local name=$1 limit=$2 t="$bin/tests/$1"
    [ -x "$t" ] || { note "test $name: missing"; return; }
    local l; l=$(left)
    if [ "$l" -lt 20 ]; then note "test $name: skipped (${l}s left)"; return; fi
    [ "$limit" -gt "$l" ] && limit=$l
    local t0=$SECONDS
    KT_REQUIRE_GPU=1 timeout "$limit" "$t" --test-threads 1 --nocapture > "$out/tests/$name.log" 2>&1
    note "test $name: rc $? in $((SECONDS - t0)) s; $(grep -E '^test result' "$out/tests/$name.log" | tail -1)"
}

if [ ! -x "$bin/kt-bench" ]; then note "missing $bin/kt-bench"; exit 1; fi
note "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cpus; threads $threads; budget ${budget}s"
nvidia-smi --query-gpu=name,pcie.link.gen.current,pcie.link.width.current --format=csv > "$out/nvidia-smi.txt" 2>&1

if [ "${TESTS:-1}" != 0 ]; then
    run_test hybrid_prefill 60
    run_test cuda_moe_experts 30
fi

gguf=$tmp/kt-v2l-gpu-prefill.gguf
rules_gpu=$bin/rules/gpu-prefill/deepseek-v2-lite-hybrid.yaml
if step gen_v2l 60 "$bin/kt-bench" gen-gguf --preset deepseek-v2-lite --out "$gguf" --threads "$threads"; then
    step crossover 120 "$bin/kt-bench" prefill --model "$gguf" --rules "$rules_gpu" \
        --prompt-len 1024 --threads "$threads" --crossover --json
    for len in ${CPU_LENS:-1024 2048}; do
        OUTFILE=prefill_cpu step "prefill_cpu_$len" 40 "$bin/kt-bench" prefill --model "$gguf" \
            --rules rules/deepseek-v2-lite-cpu.yaml --prompt-len "$len" --threads "$threads" --json
    done
fi
rm -f "$gguf"
if [ "${TESTS:-1}" != 0 ]; then
    run_test cuda_w4a16 30
    run_test hybrid_forward 40
fi
note "total ${SECONDS}s"
