#!/usr/bin/env bash
# One device call of the hybrid decode chain work (branch chain11, session 11; chain10's script
# before it, removed at the session's end since this one does all it did). Beside chain10's steps
# each decode's summary line adds the prefetch figures of the graph timeline (predicted_hit_rate:
# share of the actual top-k the prediction named; prefetch_us / prefetch_mb per prefetching layer)
# and, for a variant run with KT_PREFETCH_AB=N, the in-process A/B (N graph decodes with the
# prefetch off, then on, alternating: tok/s, experts per layer and the stretch of each).
# In order, each step under its own timeout and the call's budget:
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
# probe/{chain_probe,*.cubin} and cupti_trace/; $BASE: the base kt-bench (or kt-bench.xz). Results in $OUT/c11/,
# packed into $OUT/c11.tgz at exit (also when a step is cut short).
# Env: VARIANTS ("a=a"), EXTRA (variants run in round 1 only, after the others), QUICK_TESTS
# (test names run for every variant; the rest only for the first), REPS (2), ROUND_S (100: the
# budget left that a round needs to start), MOE_WHICH ("": variants whose binary and threads run
# the moe bench), TRACE_WHICH (""), PROMPT (1024), GEN (128), THREADS (16), BUDGET_S (330),
# PROBE_ONLY (1: the probe alone, ~30 s), TESTS (1: run the test binaries after round 1).
# Defaults: D=.device-carry/chain11, BASE=.device-carry/s11base/kt-bench.xz.
set -uo pipefail
D=${D:-.device-carry/chain11}
BASE=${BASE:-.device-carry/s11base/kt-bench.xz}
variants=${VARIANTS:-a=a}; extra=${EXTRA:-}; reps=${REPS:-2}; round_s=${ROUND_S:-100}
quick=${QUICK_TESTS:-"cuda_host_link hybrid_graph hybrid_forward"}
prompt=${PROMPT:-1024}; gen=${GEN:-128}; threads=${THREADS:-16}; budget=${BUDGET_S:-330}
out=$OUT/c11; mkdir -p "$out/tests"
pack() { tar czf "$OUT/c11.tgz" -C "$OUT" c11; }
trap pack EXIT
left() { echo $((budget - SECONDS)); }
note() { echo "$*" | tee -a "$out/summary.txt"; }
B=/tmp/kt-c11; mkdir -p "$B/base"
tar xJf "$D/bin.tar.xz" -C "$B" || { note "cannot unpack $D/bin.tar.xz"; exit 1; }
case "$BASE" in
    *.xz) xz -dc "$BASE" > "$B/base/kt-bench" && chmod +x "$B/base/kt-bench" ;;
    *) cp "$BASE" "$B/base/kt-bench" ;;
esac
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
    note "$tag: rc $rc in $((SECONDS - t0)) s; $(python3 - "$out/$tag.json" <<'PY' 2>&1
import json, sys
try:
    j = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
except Exception as e:
    print("no json:", e); sys.exit()
def tl(t):
    if not t: return "no timeline"
    h = t.get("predicted_hit_rate")
    return "experts %.1f us, stretch %.1f us, hits %s, prefetch %.1f us %.2f MB" % (
        1e3 * t["experts_per_moe_layer_ms"], 1e3 * t["gpu_between_moe_ms"],
        "-" if h is None else "%.1f%%" % (100 * h), t.get("prefetch_us", 0), t.get("prefetch_mb", 0))
b = j.get("decode_bound_fraction")
print("tok/s %.2f, bound %s, dram %s; %s" % (j["decode_tokens_per_s"], "-" if b is None else "%.1f%%" % (100 * b),
      [round(x, 1) for x in j.get("dram_gbps_readings", {}).values()] if isinstance(j.get("dram_gbps_readings"), dict) else j.get("dram_gbps_readings"),
      tl(j.get("decode_graph_timeline"))))
for r in j.get("prefetch_ab", []):
    print("   ab prefetch %-5s tok/s %.2f; %s" % (r["prefetch"], r["decode_tokens_per_s"], tl(r.get("decode_graph_timeline"))))
PY
)"
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
