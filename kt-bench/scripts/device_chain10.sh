#!/usr/bin/env bash
# One device call of the hybrid decode chain work (branch chain10, session 10; chain9's script
# before it, chain8's before that). In order, each step under its own timeout and the call's budget:
#  1. the chain probe (kt-kernels/examples/chain_probe.rs: the FFN entry's variants and cut-short
#     stages, the return kernel, the MLA pair, rope + absorption; standalone, graph-timed), if
#     carried;
#  2. a synthetic V2-Lite GGUF (27 layers, Q4_K_M-like mix);
#  3. `kt-bench moe --shape deepseek-v2-lite --format q4_k --tokens 1` for each of MOE_WHICH (the
#     experts of one layer back to back, to set beside the decode's experts per layer);
#  4. `kt-bench decode` with rules/deepseek-v2-lite-hybrid.yaml, the base binary and the variants
#     interleaved per round (base, v1, v2, ...): tok/s, the decode graph's timeline
#     (gpu_between_moe_ms: the GPU stretch between two layers' experts; experts per layer) and
#     the DRAM probes; after round 1, the GPU test binaries of each variant with
#     KT_REQUIRE_GPU=1 and the variant's environment (the quick ones first), then the
#     remaining rounds;
#  5. if the budget allows, one CUPTI-traced decode of each of TRACE_WHICH
#     (kt-bench/peers/cupti_trace: per-node timeline of the graph's replays).
# A variant is TAG=BINDIR[@THREADS][:ENV=VALUE,...]: $B/BINDIR/kt-bench run with that many
# threads (default THREADS) and those variables (so one binary can be several variants, e.g. a
# thread count or an env-selected kernel). A variant whose first run gives no result is dropped
# from later rounds. The base variant is BASE_SPEC (base=base).
# Carried in $D: bin.tar.xz with <bindir>/kt-bench, tests_<bindir>/* (stripped), optionally
# probe/{chain_probe,*.cubin} and cupti_trace/; $BASE: the base kt-bench. Results in $OUT/c10/,
# packed into $OUT/c10.tgz at exit (also when a step is cut short).
# Env: VARIANTS ("a=a"), EXTRA (variants run in round 1 only, after the others), QUICK_TESTS
# (test names run for every variant; the rest only for the first), REPS (2), ROUND_S (100: the
# budget left that a round needs to start), MOE_WHICH ("": variants whose binary and threads run
# the moe bench), TRACE_WHICH (""), PROMPT (1024), GEN (128), THREADS (16), BUDGET_S (330),
# PROBE_ONLY (1: the probe alone, ~30 s), TESTS (1: run the test binaries after round 1).
set -uo pipefail
D=${D:-.device-carry/chain10}
BASE=${BASE:-.device-carry/s10base/kt-bench}
variants=${VARIANTS:-a=a}; extra=${EXTRA:-}; reps=${REPS:-2}; round_s=${ROUND_S:-100}
quick=${QUICK_TESTS:-"cuda_host_link hybrid_graph hybrid_forward"}
prompt=${PROMPT:-1024}; gen=${GEN:-128}; threads=${THREADS:-16}; budget=${BUDGET_S:-330}
out=$OUT/c10; mkdir -p "$out/tests"
pack() { tar czf "$OUT/c10.tgz" -C "$OUT" c10; }
trap pack EXIT
left() { echo $((budget - SECONDS)); }
note() { echo "$*" | tee -a "$out/summary.txt"; }
B=/tmp/kt-c10; mkdir -p "$B/base"
tar xJf "$D/bin.tar.xz" -C "$B" || { note "cannot unpack $D/bin.tar.xz"; exit 1; }
cp "$BASE" "$B/base/kt-bench"
declare -A vbin venv vthr
tags=(); extra_tags=()
for spec in ${BASE_SPEC:-base=base} $variants $extra; do
    tag=${spec%%=*}; rest=${spec#*=}
    bt=${rest%%:*}; vbin[$tag]=${bt%%@*}
    if [[ "$bt" == *@* ]]; then vthr[$tag]=${bt#*@}; else vthr[$tag]=$threads; fi
    if [[ "$rest" == *:* ]]; then venv[$tag]=$(echo "${rest#*:}" | tr ',' ' '); else venv[$tag]=""; fi
    if [[ " $extra " == *" $spec "* ]]; then extra_tags+=("$tag"); else tags+=("$tag"); fi
done
note "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2), $(nproc) cpus; $(nvidia-smi -L | head -1)"
note "variants: $(for t in "${tags[@]}" "${extra_tags[@]}"; do printf '%s=%s@%s[%s] ' "$t" "${vbin[$t]}" "${vthr[$t]}" "${venv[$t]}"; done)"
if [ -x "$B/probe/chain_probe" ]; then
    timeout 60 "$B/probe/chain_probe" "$B/probe" > "$out/probe.txt" 2>&1
    note "probe: rc $? at ${SECONDS}s"
    pack
fi
[ "${PROBE_ONLY:-0}" = 1 ] && exit 0
gguf=/tmp/kt-v2l.gguf
timeout 150 "$B/base/kt-bench" gen-gguf --preset deepseek-v2-lite --out "$gguf" --threads "$threads" \
    > "$out/gen.log" 2>&1 || { note "gen-gguf failed"; exit 1; }
note "gguf made at ${SECONDS}s"
run() { # tag file-tag [env...]
    local v=$1 tag=$2; shift 2
    local t0=$SECONDS
    env ${venv[$v]} "$@" timeout 100 "$B/${vbin[$v]}/kt-bench" decode --model "$gguf" \
        --rules rules/deepseek-v2-lite-hybrid.yaml --prompt-len "$prompt" --gen-len "$gen" \
        --threads "${vthr[$v]}" --json > "$out/$tag.json" 2> "$out/$tag.err"
    local rc=$?
    note "$tag: rc $rc in $((SECONDS - t0)) s; $(grep -oE '"(decode_tokens_per_s|gpu_between_moe_ms|experts_per_moe_layer_ms|experts_quantiles_ms|dram_gbps|dram_gbps_readings|decode_bound_fraction|routed_gbps)":(\[[^]]*\]|\{[^}]*\}|[^,]*)' "$out/$tag.json" | tr '\n' ' ')"
    pack
}
for v in ${MOE_WHICH:-}; do
    [ "$(left)" -gt 30 ] || { note "budget: moe $v skipped"; continue; }
    t0=$SECONDS
    env ${venv[$v]} timeout 40 "$B/${vbin[$v]}/kt-bench" moe --shape deepseek-v2-lite --format q4_k \
        --tokens 1 --threads "${vthr[$v]}" --seconds 3 --cpu-time --json > "$out/moe_$v.json" 2> "$out/moe_$v.err"
    note "moe $v: rc $? in $((SECONDS - t0)) s; $(head -c 600 "$out/moe_$v.json")"
    pack
done
tests() { # tag names...
    local v=$1; shift
    for name in "$@"; do
        local t="$B/tests_${vbin[$v]}/$name"
        [ -x "$t" ] || continue
        [ "$(left)" -gt 15 ] || { note "test $v/$name: skipped"; continue; }
        local t0=$SECONDS
        env ${venv[$v]} KT_REQUIRE_GPU=1 timeout 60 "$t" --test-threads 1 > "$out/tests/${v}_$name.log" 2>&1
        note "test $v/$name: rc $? in $((SECONDS - t0)) s; $(grep -E '^test result' "$out/tests/${v}_$name.log" | tail -1)"
        pack
    done
}
declare -A dead
for r in $(seq 1 "$reps"); do
    [ "$(left)" -gt "$round_s" ] || { note "budget: A/B stopped before round $r"; break; }
    round=("${tags[@]}")
    [ "$r" = 1 ] && round+=("${extra_tags[@]}")
    for v in "${round[@]}"; do
        [ -z "${dead[$v]:-}" ] || continue
        run "$v" "${v}_$r"
        grep -q decode_tokens_per_s "$out/${v}_$r.json" || { dead[$v]=1; note "$v: no result, dropped"; }
    done
    if [ "$r" = 1 ] && [ "${TESTS:-1}" = 1 ]; then
        for v in "${tags[@]}" "${extra_tags[@]}"; do [ "$v" = base ] || tests "$v" $quick; done
        first=${tags[1]}
        rest=$(ls "$B/tests_${vbin[$first]}" 2>/dev/null | grep -vxF -f <(echo $quick | tr ' ' '\n'))
        tests "$first" $rest
    fi
done
if [ -n "${TRACE_WHICH:-}" ] && so_lib=$(bash "$B/cupti_trace/build.sh" /tmp/kt-cupti 2> "$out/cupti_build.log"); then
    so=$(echo "$so_lib" | head -1); lib=$(echo "$so_lib" | tail -1)
    for v in $TRACE_WHICH; do
        [ "$(left)" -gt 45 ] || { note "budget: trace $v skipped"; continue; }
        run "$v" "trace_$v" CUDA_INJECTION64_PATH="$so" KT_TRACE_OUT="/tmp/trace_$v.csv" \
            LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"
        timeout 30 python3 "$B/cupti_trace/analyze.py" "/tmp/trace_$v.csv" --skip 40 --replays 40 \
            > "$out/trace_$v.txt" 2>&1
        grep "per MoE layer\|replay span" "$out/trace_$v.txt" | tee -a "$out/summary.txt"
        pack
    done
fi
rm -f "$gguf"
note "total ${SECONDS}s"
