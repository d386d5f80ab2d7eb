#!/usr/bin/env bash
# Builds ggml's CPU library from llama.cpp's source (../../shared/anchors/llamacpp/prepare.sh puts
# it in .anchors/llamacpp-src) as static libraries, and the ggml_matmul peer harness linked
# against them: one self-contained binary to carry to the device.
# ISA: AVX512 with VNNI and BF16 (the device's Xeon; AMX compiled out as in the llama.cpp anchor,
# whose AMX path miscomputes DeepSeek models). KT_GGML_NATIVE=1 builds for the build machine
# instead.
#   bash kt-bench/peers/build_ggml_peer.sh .anchors/llamacpp-src target/ggml-peer
set -euo pipefail
src=${1:-.anchors/llamacpp-src}; build=${2:-target/ggml-peer}
here=$(cd "$(dirname "$0")" && pwd)
if [ "${KT_GGML_NATIVE:-0}" = 1 ]; then
  isa=(-DGGML_NATIVE=ON)
else
  isa=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
       -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
fi
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_OPENMP=OFF "${isa[@]}" \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF > "$build.cmake.log" 2>&1
cmake --build "$build" -j "$(nproc)" --target ggml ggml-cpu ggml-base > "$build.build.log" 2>&1
libs=$(find "$build" -name 'libggml*.a' | sort -r | tr '\n' ' ')
g++ -O2 -x c "$here/ggml_matmul.c" -x none -o "$build/ggml_matmul" -I"$src/ggml/include" \
  -Wl,--start-group $libs -Wl,--end-group -lm -pthread
echo "built $build/ggml_matmul"
