#!/usr/bin/env bash
# Builds `llamacpp-bench` (bench.cpp here: llama-bench's pp/tg tests over the public llama.h
# API; the pinned llama.cpp source ships no tools/ sources) against a static libllama, as one
# static x86-64 binary for the side-by-side with `kt-bench decode/prefill` on the same GGUF
# (kt-bench/scripts/device_engine.sh runs it).
#
# Source: the pinned llama.cpp checkout (read-only), built out of tree as a subproject of
# CMakeLists.txt here. CPU backend only,
# compiled for the device (Sapphire/Emerald Rapids Xeon) without -march=native so the
# binary does not depend on the build machine: AVX2/FMA/F16C, AVX512 F/BW/DQ/VL + VBMI,
# VNNI and BF16. AMX stays off: with it, llama.cpp (this revision) puts DeepSeek's
# attn_k_b/attn_v_b into its AMX weight buffer, whose backend does not take the ops MLA runs
# on them, and context creation aborts (GGML_ASSERT(*cur_backend_id != -1) in
# ggml_backend_sched_split_graph, seen on tiny-dsv3 and the synthetic V2-Lite). AMX would
# only have served plain matmuls anyway: the routed experts (MUL_MAT_ID) run on the
# AVX512 kernels with llama.cpp's repacked Q4_K layout (CPU_REPACK, on by default).
# No CUDA, no OpenMP (ggml's own thread pool), no network libraries.
#
# Usage: build.sh [SRC] [BUILD_DIR]   (defaults below); prints the binary's path.
# Env: JOBS (default: nproc).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
src="${1:-/work/main/.anchors/llamacpp-src}"
build="${2:-$repo/target/llamacpp-bench}"
jobs="${JOBS:-$(nproc)}"

if [ ! -f "$src/include/llama.h" ]; then
    echo "build.sh: $src is not a llama.cpp checkout (no include/llama.h)" >&2
    exit 1
fi

cmake -S "$here" -B "$build" \
    -DLLAMACPP_SRC="$src" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DGGML_STATIC=ON \
    -DGGML_NATIVE=OFF \
    -DGGML_BACKEND_DL=OFF \
    -DGGML_CPU_ALL_VARIANTS=OFF \
    -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
    -DGGML_OPENMP=OFF \
    -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_COMMON=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_APP=OFF \
    >"$build.cmake.log" 2>&1 || { tail -30 "$build.cmake.log" >&2; exit 1; }

cmake --build "$build" --target llamacpp-bench -j "$jobs" >"$build.build.log" 2>&1 \
    || { tail -40 "$build.build.log" >&2; exit 1; }

bin="$build/llamacpp-bench"
# A static binary: no dynamic section, so it runs on a bare device image.
if file "$bin" | grep -q "dynamically linked"; then
    echo "build.sh: $bin is dynamically linked" >&2
    exit 1
fi
echo "$bin"
