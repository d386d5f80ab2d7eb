#!/usr/bin/env bash
# One device call of branch chain8 (session 8): the GPU chain of the hybrid decode between two
# MoE layers' CPU experts. In order, each step under its own timeout and the call's budget:
#  1. the chain probe (kt-kernels/examples/chain_probe.rs: the FFN entry's variants, the return
#     kernel, the MLA pair, rope + absorption; standalone, graph-timed), when carried;
#  2. a synthetic V2-Lite GGUF (27 layers, Q4_K_M-like mix) and `kt-bench decode` with
#     rules/deepseek-v2-lite-hybrid.yaml, the base binary and the variants interleaved per round
#     (base, a, base, a, ...): tok/s and the decode graph's timeline (gpu_between_moe_ms: the GPU
#     stretch between two layers' experts);
#  3. one CUPTI-traced decode of each traced binary (kt-bench/peers/cupti_trace: per-node
#     timeline of the graph's replays);
#  4. the GPU test binaries of each variant with KT_REQUIRE_GPU=1.
# A variant's programmatic dependent launches (the MLA combine) can be turned off with KT_PDL=0:
# one run of each variant is made so, and a variant whose first run fails is rerun so.
# Carried in $D: bin.tar.xz with probe/{chain_probe,*.cubin} (optional), <variant>/kt-bench,
# tests_<variant>/* (stripped) and cupti_trace/; $BASE: the base kt-bench. Results in $OUT/c8/,
# packed into $OUT/c8.tgz at exit (also when a step is cut short).
# Env: VARIANTS ("a"), REPS (3), TRACE_WHICH (the variants; add base to trace it too), PROMPT
# (1024), GEN (128), THREADS (16), BUDGET_S (380), PROBE_ONLY (1: the probe alone, ~30 s).
set -uo pipefail
D=${D:-.device-carry/chain8}
BASE=${BASE:-.device-carry/s8base/kt-bench}
variants=${VARIANTS:-a}; reps=${REPS:-3}
prompt=${PROMPT:-1024}; gen=${GEN:-128}; threads=${THREADS:-16}; budget=${BUDGET_S:-380}
out=$OUT/c8; mkdir -p "$out/tests"
pack() { tar czf "$OUT/c8.tgz" -C "$OUT" c8; }
trap pack EXIT
left() { echo $((budget - SECONDS)); }
note() { echo "$*" | tee -a "$out/summary.txt"; }
B=/tmp/kt-c8; mkdir -p "$B/base"
tar xJf "$D/bin.tar.xz" -C "$B" || { note "cannot unpack $D/bin.tar.xz"; exit 1; }
cp "$BASE" "$B/base/kt-bench"
note "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(nproc) cpus; $(nvidia-smi -L | head -1)"
if [ -x "$B/probe/chain_probe" ]; then
    timeout 120 "$B/probe/chain_probe" "$B/probe" > "$out/probe.txt" 2>&1
    note "probe: rc $? at ${SECONDS}s"
    pack
fi
[ "${PROBE_ONLY:-0}" = 1 ] && exit 0
gguf=/tmp/kt-v2l.gguf
timeout 150 "$B/base/kt-bench" gen-gguf --preset deepseek-v2-lite --out "$gguf" --threads "$threads" \
    > "$out/gen.log" 2>&1 || { note "gen-gguf failed"; exit 1; }
note "gguf made at ${SECONDS}s"
run() { # which tag [env...]
    local which=$1 tag=$2; shift 2
    local t0=$SECONDS
    env "$@" timeout 100 "$B/$which/kt-bench" decode --model "$gguf" \
        --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len "$prompt" --gen-len "$gen" \
        --threads "$threads" --json > "$out/$tag.json" 2> "$out/$tag.err"
    local rc=$?
    note "$tag: rc $rc in $((SECONDS - t0)) s; $(grep -oE '"(decode_tokens_per_s|gpu_between_moe_ms|experts_per_moe_layer_ms|dram_gbps)":[^,]*' "$out/$tag.json" | tr '\n' ' ')"
    pack
}
# per variant: extra env of its runs (a variant whose first run fails with programmatic
# dependent launches on is rerun with KT_PDL=0 from then on, and so are its tests)
declare -A venv
for r in $(seq 1 "$reps"); do
    [ "$(left)" -gt 150 ] || { note "budget: A/B stopped before round $r"; break; }
    for v in base $variants; do
        run "$v" "${v}_$r" ${venv[$v]:-}
        if [ "$v" != base ] && [ -z "${venv[$v]:-}" ] && ! grep -q decode_tokens_per_s "$out/${v}_$r.json"; then
            venv[$v]="KT_PDL=0"; note "$v: no result with PDL; KT_PDL=0 from here on"
            run "$v" "${v}_${r}_nopdl" KT_PDL=0
        fi
    done
done
# one run of each variant without the programmatic launches (what they add to the stretch)
for v in $variants; do
    [ -z "${venv[$v]:-}" ] || continue
    [ "$(left)" -gt 140 ] || { note "budget: $v without PDL skipped"; continue; }
    run "$v" "${v}_nopdl" KT_PDL=0
done
if so_lib=$(bash "$B/cupti_trace/build.sh" /tmp/kt-cupti 2> "$out/cupti_build.log"); then
    so=$(echo "$so_lib" | head -1); lib=$(echo "$so_lib" | tail -1)
    for v in ${TRACE_WHICH:-$variants}; do
        [ "$(left)" -gt 70 ] || { note "budget: trace $v skipped"; continue; }
        run "$v" "trace_$v" CUDA_INJECTION64_PATH="$so" KT_TRACE_OUT="/tmp/trace_$v.csv" \
            LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}" ${venv[$v]:-}
        timeout 60 python3 "$B/cupti_trace/analyze.py" "/tmp/trace_$v.csv" --skip 40 --replays 40 \
            > "$out/trace_$v.txt" 2>&1
        grep "per MoE layer\|replay span" "$out/trace_$v.txt" | tee -a "$out/summary.txt"
        pack
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
        env ${venv[$v]:-} KT_REQUIRE_GPU=1 timeout 60 "$t" --test-threads 1 > "$out/tests/${v}_$name.log" 2>&1
        note "test $v/$name: rc $? in $((SECONDS - t0)) s; $(grep -E '^test result' "$out/tests/${v}_$name.log" | tail -1)"
        pack
    done
done
rm -f "$gguf"
note "total ${SECONDS}s"
