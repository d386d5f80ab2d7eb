#!/usr/bin/env bash
# Compiles every cuda/*.cu for sm_80 and sm_90a (plus compute_90 PTX) with the pinned nvcc
# 13.0, so CUDA code cannot rot unseen on machines without a GPU. The first run installs the
# toolchain of cuda/toolchain.txt from PyPI into target/cuda-toolchain; later runs reuse it
# and recompile only sources older than their fatbin, the headers or the flags.
# KT_NVCC=/path/to/nvcc uses that compiler instead.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cuda="$root/cuda"
toolchain="$root/target/cuda-toolchain"
out="$root/target/cuda-check"

if [[ -n "${KT_NVCC:-}" ]]; then
    nvcc=$KT_NVCC
else
    stamp="$toolchain/.installed"
    if [[ ! -f "$stamp" ]] || ! cmp -s "$stamp" "$cuda/toolchain.txt"; then
        echo "cuda/check.sh: installing nvcc from cuda/toolchain.txt into target/cuda-toolchain"
        rm -rf "$toolchain"
        python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
            --target "$toolchain" -r "$cuda/toolchain.txt"
        cp "$cuda/toolchain.txt" "$stamp"
    fi
    nvcc="$toolchain/nvidia/cu13/bin/nvcc"
fi
"$nvcc" --version | grep -q 'release 13\.0' || {
    echo "cuda/check.sh: $nvcc is not nvcc 13.0; its output may not load on a 580 driver" >&2
    exit 1
}

mapfile -t flags < "$cuda/nvcc-flags.txt"
mkdir -p "$out"
deps=("$cuda"/include/*.cuh "$cuda/nvcc-flags.txt")
built=0
for cu in "$cuda"/*.cu; do
    fatbin="$out/$(basename "$cu" .cu).fatbin"
    fresh=1
    [[ -f "$fatbin" ]] || fresh=0
    for dep in "$cu" "${deps[@]}"; do
        [[ $fresh == 1 && "$dep" -nt "$fatbin" ]] && fresh=0
    done
    if [[ $fresh == 1 ]]; then
        continue
    fi
    echo "cuda/check.sh: nvcc $(basename "$cu") (sm_80, sm_90a)"
    "$nvcc" "${flags[@]}" -o "$fatbin.tmp" "$cu"
    mv "$fatbin.tmp" "$fatbin"
    built=$((built + 1))
done
count=$(ls "$cuda"/*.cu | wc -l)
echo "cuda/check.sh: $count CUDA sources compile for sm_80 and sm_90a ($built rebuilt)"
