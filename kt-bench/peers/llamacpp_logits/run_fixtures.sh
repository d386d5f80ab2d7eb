#!/usr/bin/env bash
# Runs the llamacpp_logits harness (build.sh) on the six tiny GGUFs of the shared fixtures in
# the three configurations docs/parity.md compares: the fixtures' own (repack on, flash
# attention off), repack off, and flash attention on. Writes OUT/<model>_<q>_{on,off,fa}.npy.
#   bash kt-bench/peers/llamacpp_logits/run_fixtures.sh FIXTURES_DIR OUT_DIR [HARNESS]
set -euo pipefail
fixtures=$1; out=$2; harness=${3:-target/llamacpp-build/llamacpp_logits}
mkdir -p "$out"
# comma-separated ids of a 1-D integer .npy (little-endian int32 or int64, C order)
ids() {
  python3 -c 'import numpy, sys; print(",".join(map(str, numpy.load(sys.argv[1]).ravel())))' "$1"
}
for model in tiny-dsv2 tiny-dsv3; do
  dir=$fixtures/$model
  prompt=$(ids "$dir/prompt_ids.npy"); decode=$(ids "$dir/hf_decode_tokens.npy")
  for gguf in "$dir/$model"-*.gguf; do
    q=$(basename "$gguf" .gguf); q=${q#"$model"-}
    run() { "$harness" --model "$gguf" --prompt "$prompt" --decode "$decode" --out "$out/${model}_${q}_$1.npy" "${@:2}"; }
    run on
    run off --no-repack
    run fa --flash-attn
  done
done
