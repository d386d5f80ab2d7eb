#!/usr/bin/env bash
# Builds llama.cpp's `llama` library from source as static libraries for the ISA the shared
# fixtures were made with (llamacpp.json `llama_cpp_runtime`: AVX2 FMA F16C BMI2, LLAMAFILE,
# REPACK, no AVX512), and the llamacpp_logits harness linked against them.
#   bash kt-bench/peers/llamacpp_logits/build.sh [LLAMA_SRC] [BUILD_DIR]
# Defaults: .anchors/llamacpp-src and target/llamacpp-build. OpenMP is off (ggml's own thread
# pool): each output element is computed by one thread either way, so results do not depend
# on it. KT_BUILD_JOBS sets the parallel jobs (default 2). KT_LLAMA_AVX512=1 builds the same
# with AVX512 F/BW/VNNI/BF16/VBMI instead (to see how far llama.cpp's own AVX512 build is from its
# AVX2 fixtures).
set -euo pipefail
avx512=OFF; [ "${KT_LLAMA_AVX512:-0}" = 1 ] && avx512=ON
src=${1:-.anchors/llamacpp-src}; build=${2:-target/llamacpp-build}
here=$(cd "$(dirname "$0")" && pwd)
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
  -DGGML_AVX512=$avx512 -DGGML_AVX512_VNNI=$avx512 -DGGML_AVX512_BF16=$avx512 -DGGML_AVX512_VBMI=$avx512 -DGGML_OPENMP=OFF -DGGML_LLAMAFILE=ON -DGGML_CPU_REPACK=ON -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF > "$build.cmake.log" 2>&1
cmake --build "$build" -j "${KT_BUILD_JOBS:-2}" --target llama > "$build.build.log" 2>&1
libs=$(find "$build" -name 'lib*.a' | sort -r | tr '\n' ' ')
g++ -O2 -x c "$here/llamacpp_logits.c" -x none -o "$build/llamacpp_logits" \
  -I"$src/include" -I"$src/ggml/include" -Wl,--start-group $libs -Wl,--end-group -lm -pthread
echo "built $build/llamacpp_logits"
