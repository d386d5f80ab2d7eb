#!/usr/bin/env bash
# Builds the final binaries of session 12 and packs them: .device-carry/s12f (kt-bench, GPU tests, timing
# examples) and .device-carry/s12f2 (kt-bench, CPU tests). Run from the repository root.
set -euo pipefail
R=$(git rev-parse --short HEAD)
cargo build --release -p kt-bench --features cuda
cargo build --release -p kt-kernels --features cuda --example cuda_mla_timing --example cuda_w4a16_timing
cargo test --release --features cuda -p kt-kernels -p kt-model --no-run --message-format=json 2>/dev/null \
  | python3 -c '
import sys, json
for l in sys.stdin:
    try: j = json.loads(l)
    except Exception: continue
    x = j.get("executable")
    if x and j.get("profile", {}).get("test"):
        k = j["target"]["kind"]; n = j["target"]["name"]
        print(("lib_" + n) if "lib" in k else n, x)
' > /tmp/final_tests.txt
# the uplifted kt-bench must be the cuda build (a later non-cuda build would replace it)
cargo build --release -p kt-bench --features cuda
grep -q 'no CUDA driver' target/release/kt-bench
for d in s12f s12f2; do rm -rf .device-carry/$d; mkdir -p .device-carry/$d/bin/tests; echo "$R" > .device-carry/$d/COMMIT; done
strip -o .device-carry/s12f/bin/kt-bench target/release/kt-bench
cp .device-carry/s12f/bin/kt-bench .device-carry/s12f2/bin/kt-bench
for e in cuda_mla_timing cuda_w4a16_timing; do strip -o .device-carry/s12f/bin/$e target/release/examples/$e; done
while read -r n x; do
  case $n in
    cuda_*|hybrid_*) strip -o .device-carry/s12f/bin/tests/$n "$x";;
    lib_kt_kernels) strip -o .device-carry/s12f2/bin/tests/kt_kernels_lib "$x";;
    cpu_*|moe_*|matmul_*|ggml_order_dots) strip -o .device-carry/s12f2/bin/tests/$n "$x";;
  esac
done < /tmp/final_tests.txt
for d in s12f s12f2; do tar -C .device-carry/$d/bin -cf - . | xz -T2 -6 > .device-carry/$d/bin.tar.xz; rm -rf .device-carry/$d/bin; done
cp .device-carry/s11f2/llamacpp-bench.xz .device-carry/s12f/
ls -la .device-carry/s12f .device-carry/s12f2
