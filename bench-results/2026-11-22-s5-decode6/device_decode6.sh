#!/usr/bin/env bash
# One device call of branch decode6 (session 5): the hybrid decode A/B, old vs new on the same
# synthetic V2-Lite GGUF (27 layers, Q4_K_M-like mix, rules/deepseek-v2-lite-hybrid.yaml),
# interleaved old, new, old, new; then one CUPTI-traced run of each (the per-node timeline of the
# decode graph replays, kt-bench/peers/cupti_trace); then the GPU test binaries.
# Builds nothing but the tracer (gcc on the device). Carried in $D (default .device-carry/decode6):
#   bin.tar.xz    new kt-bench + tests/* (stripped), cupti_trace/ (tracer sources + analyze.py)
#   and $BASE (default .device-carry/s5base/kt-bench): the old kt-bench.
# Results under $OUT/d6/ and packed into $OUT/d6.tgz.
# Env: REPS (2), PROMPT (1024), GEN (128), THREADS (16), TRACE (1), TRACE_WHICH ("old new"),
# TESTS (1), BUDGET_S (440).
set -uo pipefail
D=${D:-.device-carry/decode6}
BASE=${BASE:-.device-carry/s5base/kt-bench}
reps=${REPS:-2}; prompt=${PROMPT:-1024}; gen=${GEN:-128}; threads=${THREADS:-16}
budget=${BUDGET_S:-440}
out=$OUT/d6; mkdir -p "$out/tests"
pack() { tar czf "$OUT/d6.tgz" -C "$OUT" d6; }
trap pack EXIT
left() { echo $((budget - SECONDS)); }
note() { echo "$*" | tee -a "$out/summary.txt"; }
B=/tmp/kt-d6; mkdir -p "$B/new" "$B/old"
tar xJf "$D/bin.tar.xz" -C "$B/new" || { note "cannot unpack $D/bin.tar.xz"; exit 1; }
cp "$BASE" "$B/old/kt-bench"
note "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(nproc) cpus; $(nvidia-smi -L | head -1)"
top -bn1 | head -12 > "$out/top_before.txt"
gguf=/tmp/kt-v2l.gguf
timeout 150 "$B/new/kt-bench" gen-gguf --preset deepseek-v2-lite --out "$gguf" --threads "$threads" \
    > "$out/gen.log" 2>&1 || { note "gen-gguf failed"; exit 1; }
note "gguf made at ${SECONDS}s"
run() { # which tag [env...]
    local which=$1 tag=$2; shift 2
    local t0=$SECONDS
    env "$@" timeout 150 "$B/$which/kt-bench" decode --model "$gguf" \
        --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len "$prompt" --gen-len "$gen" \
        --threads "$threads" --json > "$out/$tag.json" 2> "$out/$tag.err"
    local rc=$?
    local tps=$(grep -o '"decode_tokens_per_s":[^,]*' "$out/$tag.json" | head -1)
    local pipe=$(grep -o '"decode_pipelined_tokens_per_s":[^,]*' "$out/$tag.json" | head -1)
    note "$tag: rc $rc in $((SECONDS - t0)) s; $tps $pipe"
}
for r in $(seq 1 "$reps"); do
    [ "$(left)" -gt 120 ] || { note "budget: A/B stopped before rep $r"; break; }
    run old "old_$r"
    run new "new_$r"
done
if [ "${TRACE:-1}" != 0 ] && [ "$(left)" -gt 120 ]; then
    if so_lib=$(bash "$D/cupti_trace/build.sh" /tmp/kt-cupti 2> "$out/cupti_build.log"); then
        so=$(echo "$so_lib" | head -1); lib=$(echo "$so_lib" | tail -1)
        for which in ${TRACE_WHICH:-old new}; do
            [ "$(left)" -gt 60 ] || break
            run "$which" "trace_$which" CUDA_INJECTION64_PATH="$so" KT_TRACE_OUT="/tmp/trace_$which.csv" \
                LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"
            python3 "$D/cupti_trace/analyze.py" "/tmp/trace_$which.csv" --skip 40 --replays 40 \
                > "$out/trace_$which.txt" 2>&1
            xz -T4 -c "/tmp/trace_$which.csv" > "$out/trace_$which.csv.xz"
            grep "per MoE layer\|replay span" "$out/trace_$which.txt" | tee -a "$out/summary.txt"
        done
    else
        note "tracer build failed: $(tail -3 "$out/cupti_build.log")"
    fi
fi
if [ "${TESTS:-1}" != 0 ]; then
    for t in "$B"/new/tests/*; do
        [ -x "$t" ] || continue
        name=$(basename "$t")
        [ "$(left)" -gt 30 ] || { note "test $name: skipped"; continue; }
        t0=$SECONDS
        KT_REQUIRE_GPU=1 timeout 120 "$t" --test-threads 1 > "$out/tests/$name.log" 2>&1
        note "test $name: rc $? in $((SECONDS - t0)) s; $(grep -E '^test result' "$out/tests/$name.log" | tail -1)"
    done
fi
top -bn1 | head -12 > "$out/top_after.txt"
rm -f "$gguf"
note "total ${SECONDS}s"
