#!/usr/bin/env bash
# Compiles the chain probe's kernels (sm_90a cubins) into OUTDIR: probe.cubin (probe.cu: the
# gating kernels and the FFN entry's variants), hybrid_ops.cubin and mla_decode_small.cubin (the
# library's sources as they are). Uses the pinned nvcc of cuda/check.sh. Usage: build.sh OUTDIR
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
out=${1:?usage: build.sh OUTDIR}
nvcc=${KT_NVCC:-$root/target/cuda-toolchain/nvidia/cu13/bin/nvcc}
mkdir -p "$out"
flags=(-std=c++17 -O3 -Werror all-warnings -cubin -arch=sm_90a -Xptxas -warn-spills,-Werror)
"$nvcc" "${flags[@]}" -o "$out/probe.cubin" "$here/probe.cu"
"$nvcc" "${flags[@]}" -o "$out/hybrid_ops.cubin" "$root/cuda/hybrid_ops.cu"
"$nvcc" "${flags[@]}" -o "$out/mla_decode_small.cubin" "$root/cuda/mla_decode_small.cu"
