#!/usr/bin/env bash
# Builds a CPU-only device carry: .device-carry/$1/bin.tar.xz holding kt-bench (no cuda feature) and the test
# binaries named in $TESTS (lib_kt_kernels is the kt-kernels library's unit tests), plus COMMIT.
# Run from the repository root: TESTS="cpu_amx_gemm lib_kt_kernels" bash bench-results/tools/mk_cpu_carry.sh NAME
set -euo pipefail
D=.device-carry/$1
cargo build --release -p kt-bench
cargo test --release -p kt-kernels -p kt-model --no-run --message-format=json 2>/dev/null \
  | python3 -c '
import sys, json
for l in sys.stdin:
    try: j = json.loads(l)
    except Exception: continue
    x = j.get("executable")
    if x and j.get("profile", {}).get("test"):
        k = j["target"]["kind"]; n = j["target"]["name"]
        print(("lib_" + n) if "lib" in k else n, x)
' > /tmp/carry_tests.txt
rm -rf $D; mkdir -p $D/bin/tests
git rev-parse --short HEAD > $D/COMMIT
strip -o $D/bin/kt-bench target/release/kt-bench
for t in ${TESTS:-}; do
  x=$(awk -v n="$t" '$1 == n {print $2}' /tmp/carry_tests.txt)
  [ -n "$x" ] || { echo "no test binary named $t" >&2; exit 1; }
  strip -o $D/bin/tests/$t "$x"
done
tar -C $D/bin -cf - . | xz -T2 -6 > $D/bin.tar.xz; rm -rf $D/bin
ls -la $D; cat $D/COMMIT
