#!/usr/bin/env bash
# One device call: kt's CPU engine next to llama.cpp on the SAME synthetic GGUF.
# Builds nothing; binaries carried in .device-carry/:
#   kt-bench        (cargo build -p kt-bench --release)
#   llamacpp-bench  (kt-bench/peers/llamacpp_bench/build.sh: llama.cpp's pp/tg tests over
#                    a static libllama, AVX512/VNNI/BF16 + AMX, no OpenMP)
# Steps (each bounded by `timeout`; the V3 part only runs while time is left):
#   1. kt-bench gen-gguf --preset deepseek-v2-lite (all 27 layers, Q4_K_M-like mix)
#   2. llamacpp-bench -p 1024 -n 128 -t THREADS on it
#   3. kt-bench prefill --prompt-len 1024 and decode --gen-len 128, --threads THREADS --json,
#      with --svg charts of the per-layer split
#   4. the same for a DeepSeek-V3-shaped file of V3_LAYERS layers (3 dense + MoE layers),
#      shorter runs (V3 layers are ~6.5 GB each)
# Results under $OUT/engine/: NAME.out (stdout: one JSON object per run), NAME.err, *.svg and
# summary.txt (what ran, how long each step took).
# Env: THREADS (16), BUDGET_S (total wall budget, 330), V3_LAYERS (5), TMP (/tmp).
set -uo pipefail
bin=${BIN:-.device-carry}
threads=${THREADS:-16}
budget=${BUDGET_S:-330}
v3_layers=${V3_LAYERS:-5}
tmp=${TMP:-/tmp}
out=${OUT:-/tmp/kt-out}/engine
mkdir -p "$out"
summary="$out/summary.txt"
: > "$summary"

note() { echo "$*" | tee -a "$summary"; }
left() { echo $((budget - SECONDS)); }

# step NAME LIMIT_S CMD...: runs CMD with stdout to NAME.jsonl (or .log), stderr to NAME.err,
# at most min(LIMIT_S, time left) seconds; notes the time and exit status.
step() {
    local name=$1 limit=$2; shift 2
    local l; l=$(left)
    if [ "$l" -lt 20 ]; then note "$name: skipped (${l}s of the budget left)"; return 1; fi
    [ "$limit" -gt "$l" ] && limit=$l
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.out" 2>"$out/$name.err"
    local rc=$?
    note "$name: rc $rc in $((SECONDS - t0)) s (limit ${limit}s): $*"
    return $rc
}

for b in kt-bench llamacpp-bench; do
    if [ ! -x "$bin/$b" ]; then note "missing $bin/$b"; exit 1; fi
done
note "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cpus; threads $threads; budget ${budget}s"

v2=$tmp/kt-v2l.gguf
if step gen_v2l 150 "$bin/kt-bench" gen-gguf --preset deepseek-v2-lite --out "$v2" --threads "$threads"; then
    step llamacpp_v2l 120 "$bin/llamacpp-bench" -m "$v2" -p 1024 -n 128 -t "$threads" -r 2
    step kt_prefill_v2l 120 "$bin/kt-bench" prefill --model "$v2" --prompt-len 1024 --threads "$threads" \
        --json --svg "$out/kt_prefill_v2l.svg"
    step kt_decode_v2l 90 "$bin/kt-bench" decode --model "$v2" --prompt-len 32 --gen-len 128 --threads "$threads" \
        --json --svg "$out/kt_decode_v2l.svg"
fi
rm -f "$v2"

v3=$tmp/kt-v3.gguf
if [ "$(left)" -gt 120 ] && step gen_v3 120 "$bin/kt-bench" gen-gguf --preset deepseek-v3 --layers "$v3_layers" \
        --out "$v3" --threads "$threads"; then
    step llamacpp_v3 60 "$bin/llamacpp-bench" -m "$v3" -p 256 -n 32 -t "$threads" -r 1
    step kt_prefill_v3 60 "$bin/kt-bench" prefill --model "$v3" --prompt-len 256 --threads "$threads" \
        --json --svg "$out/kt_prefill_v3.svg"
    step kt_decode_v3 60 "$bin/kt-bench" decode --model "$v3" --prompt-len 16 --gen-len 32 --threads "$threads" \
        --json --svg "$out/kt_decode_v3.svg"
fi
rm -f "$v3"
note "total ${SECONDS}s"
