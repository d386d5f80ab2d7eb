#!/usr/bin/env bash
# One device call of branch chain7 (session 6): the hybrid decode of a synthetic V2-Lite GGUF
# (27 layers, Q4_K_M-like mix, rules/deepseek-v2-lite-hybrid.yaml), the old binary against one
# or more new ones, interleaved per round (old, a, b, old, a, b, ...); then one CUPTI-traced
# run of each traced binary (kt-bench/peers/cupti_trace: the per-node timeline of the decode
# graph's replays); then the GPU test binaries of each variant. Builds nothing but the tracer.
# Carried in $D: bin.tar.xz with <variant>/kt-bench, tests_<variant>/* (stripped) and
# cupti_trace/; $BASE: the old kt-bench. Results in $OUT/c7/, packed into $OUT/c7.tgz at exit.
# Env: VARIANTS ("a b"), REPS (3), TRACE_WHICH (the variants; add old to trace it too; on a slow
# instance lower REPS so the traces fit), PROMPT (1024), GEN (128), THREADS (16),
# BUDGET_S (390).
set -uo pipefail
D=${D:-.device-carry/chain7}
BASE=${BASE:-.device-carry/s6base/kt-bench}
variants=${VARIANTS:-a b}; reps=${REPS:-3}
prompt=${PROMPT:-1024}; gen=${GEN:-128}; threads=${THREADS:-16}; budget=${BUDGET_S:-390}
out=$OUT/c7; mkdir -p "$out/tests"
pack() { tar czf "$OUT/c7.tgz" -C "$OUT" c7; }
trap pack EXIT
left() { echo $((budget - SECONDS)); }
note() { echo "$*" | tee -a "$out/summary.txt"; }
B=/tmp/kt-c7; mkdir -p "$B/old"
tar xJf "$D/bin.tar.xz" -C "$B" || { note "cannot unpack $D/bin.tar.xz"; exit 1; }
cp "$BASE" "$B/old/kt-bench"
note "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(nproc) cpus; $(nvidia-smi -L | head -1)"
gguf=/tmp/kt-v2l.gguf
timeout 150 "$B/old/kt-bench" gen-gguf --preset deepseek-v2-lite --out "$gguf" --threads "$threads" \
    > "$out/gen.log" 2>&1 || { note "gen-gguf failed"; exit 1; }
note "gguf made at ${SECONDS}s"
run() { # which tag [env...]
    local which=$1 tag=$2; shift 2
    local t0=$SECONDS
    env "$@" timeout 100 "$B/$which/kt-bench" decode --model "$gguf" \
        --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len "$prompt" --gen-len "$gen" \
        --threads "$threads" --json > "$out/$tag.json" 2> "$out/$tag.err"
    local rc=$?
    note "$tag: rc $rc in $((SECONDS - t0)) s; $(grep -o '"decode_tokens_per_s":[^,]*' "$out/$tag.json" | head -1)"
}
for r in $(seq 1 "$reps"); do
    [ "$(left)" -gt 150 ] || { note "budget: A/B stopped before round $r"; break; }
    for v in old $variants; do run "$v" "${v}_$r"; done
done
if so_lib=$(bash "$D/cupti_trace/build.sh" /tmp/kt-cupti 2> "$out/cupti_build.log"); then
    so=$(echo "$so_lib" | head -1); lib=$(echo "$so_lib" | tail -1)
    for v in ${TRACE_WHICH:-$variants}; do
        [ "$(left)" -gt 75 ] || { note "budget: trace $v skipped"; continue; }
        run "$v" "trace_$v" CUDA_INJECTION64_PATH="$so" KT_TRACE_OUT="/tmp/trace_$v.csv" \
            LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"
        python3 "$D/cupti_trace/analyze.py" "/tmp/trace_$v.csv" --skip 40 --replays 40 \
            > "$out/trace_$v.txt" 2>&1
        grep "per MoE layer\|replay span" "$out/trace_$v.txt" | tee -a "$out/summary.txt"
    done
else
    note "tracer build failed: $(tail -3 "$out/cupti_build.log")"
fi
for v in $variants; do
    for t in "$B/tests_$v"/*; do
        [ -x "$t" ] || continue
        name=$(basename "$t")
        [ "$(left)" -gt 15 ] || { note "test $v/$name: skipped"; continue; }
        t0=$SECONDS
        KT_REQUIRE_GPU=1 timeout 60 "$t" --test-threads 1 > "$out/tests/${v}_$name.log" 2>&1
        note "test $v/$name: rc $? in $((SECONDS - t0)) s; $(grep -E '^test result' "$out/tests/${v}_$name.log" | tail -1)"
    done
done
rm -f "$gguf"
note "total ${SECONDS}s"
