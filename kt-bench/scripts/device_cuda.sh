#!/usr/bin/env bash
# One device call for the GPU side (builds nothing; run from the repo root). $BIN holds what
# was built here and carried: the cuda_* test binaries of kt-kernels renamed without their
# hash (`cargo test -p kt-kernels --features cuda --release --no-run --message-format=json`
# names them), the examples cuda_mla_timing and cuda_w4a16_timing, and cuda/bench_torch_*.py.
# Steps: every CUDA test with KT_REQUIRE_GPU=1 (each binary cut off after $TEST_SECONDS);
# compute-sanitizer memcheck on $SANITIZE (each cut off after $MEMCHECK_SECONDS) and racecheck
# on $RACECHECK_TESTS of cuda_mla (cut off after $RACECHECK_SECONDS; 0 skips it) when the
# machine has it; the MLA and W4A16 timings next to torch.
# Results under $OUT: tests.txt, sanitizer.txt, timing.txt, nvidia-smi.txt; a summary on stdout.
set -uo pipefail
bin=${BIN:-.device-carry/cuda}
out=${OUT:-/tmp/kt-out}; mkdir -p "$out"
export KT_REQUIRE_GPU=1
nvidia-smi > "$out/nvidia-smi.txt" 2>&1

: > "$out/tests.txt"
for t in "$bin"/cuda_*; do
  name=$(basename "$t")
  # cuda_layouts needs no GPU (g++ against the headers of the checkout it was built in): run it here.
  case $name in *_timing|cuda_layouts) continue;; esac
  [ -x "$t" ] || continue
  echo "== $name" >> "$out/tests.txt"
  timeout "${TEST_SECONDS:-600}" "$t" --test-threads=1 >> "$out/tests.txt" 2>&1
  echo "$name: exit $?" | tee -a "$out/tests.txt"
done

: > "$out/sanitizer.txt"
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -n 1)
if [ -z "$san" ]; then
  echo "compute-sanitizer: not found on this machine" | tee -a "$out/sanitizer.txt"
else
  for name in ${SANITIZE:-cuda_mla cuda_small_ops cuda_gating cuda_w4a16}; do
    [ -x "$bin/$name" ] || continue
    timeout "${MEMCHECK_SECONDS:-600}" "$san" --tool memcheck --error-exitcode 9 "$bin/$name" --test-threads=1 >> "$out/sanitizer.txt" 2>&1
    echo "memcheck $name: exit $?" | tee -a "$out/sanitizer.txt"
  done
  if [ -x "$bin/cuda_mla" ] && [ "${RACECHECK_SECONDS:-120}" != 0 ]; then
    timeout "${RACECHECK_SECONDS:-120}" "$san" --tool racecheck --error-exitcode 9 "$bin/cuda_mla" ${RACECHECK_TESTS:-prefill_rows_equal_decode_steps} >> "$out/sanitizer.txt" 2>&1
    echo "racecheck cuda_mla: exit $?" | tee -a "$out/sanitizer.txt"
  fi
fi

: > "$out/timing.txt"
for ex in cuda_mla_timing cuda_w4a16_timing; do
  [ -x "$bin/$ex" ] && "$bin/$ex" >> "$out/timing.txt" 2>&1
done
for py in bench_torch_mla.py bench_torch_matmul.py; do
  [ -f "$bin/$py" ] && python3 "$bin/$py" >> "$out/timing.txt" 2>&1
done
grep -E "KT_|TORCH_|device|Error|error" "$out/timing.txt"
