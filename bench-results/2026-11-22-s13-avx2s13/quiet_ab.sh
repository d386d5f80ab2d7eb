#!/usr/bin/env bash
# Session 13, avx2s13 (a copy of session 11 avx2s11 quiet_ab.sh, output dir changed): the 2-core AVX2 A/B for a quiet dev VM (run it after the helpers stop).
# base = main at cd4ad61 (base-kt-bench), new = branch avx2s11 (new-kt-bench), both built
# here without the cuda feature. Interleaved base/new x3 for issue 4's MoE command (T=1 and
# T=64) and issue 2's GEMV command; prints each run's fraction of its own DRAM probe.
# Raw JSON/text goes to $OUT (default bench-results/2026-11-22-s11-avx2s11/quiet).
# ~4-5 minutes (3.5 at load 2). Usage: bash quiet_ab.sh [OUT] (from the worktree, whose root holds the binaries)
set -u
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
OUT=${1:-bench-results/2026-11-22-s13-avx2s13/quiet}
mkdir -p "$OUT"
export KT_ISA=avx2
{ date -u; uptime; } | tee "$OUT/when.txt"
frac() { python3 bench-results/2026-11-22-s11-avx2s11/moe_frac.py "$1" | cut -d: -f2-; }
for T in 1 64; do
  for i in 1 2 3; do
    for v in base new; do
      f="$OUT/moe_T${T}_${v}_$i.json"
      ./$v-kt-bench moe --shape deepseek-v2-lite --format q4_k --tokens $T --threads 2 --json --cpu-time --seconds 1 > "$f" 2>/dev/null
      echo "moe T=$T $v #$i: $(frac "$f")  [load $(cut -d" " -f1,4 /proc/loadavg)]"
    done
  done
done
for i in 1 2 3; do
  for v in base new; do
    f="$OUT/matmul_${v}_$i.txt"
    ./$v-kt-bench matmul --tokens 1 --threads 2 --seconds 0.25 > "$f" 2>&1
    echo "matmul $v #$i: $(head -1 "$f" | grep -o 'read bandwidth [0-9.]* GB/s')  [load $(cut -d" " -f1,4 /proc/loadavg)]"
  done
done
echo "GEMV at 1 token, 2 threads, % of each process's probe (base | new, runs 1-3):"
python3 - "$OUT" <<'PY'
import sys, re, collections
out = sys.argv[1]
rows = collections.OrderedDict()
for v in ("base", "new"):
    for i in (1, 2, 3):
        for line in open(f"{out}/matmul_{v}_{i}.txt"):
            m = re.match(r"(\S+)\s+(\d+x\d+)\s+1\s+\S+\s+\S+\s+(\d+)%", line)
            if m:
                rows.setdefault((m[1], m[2]), {"base": [], "new": []})[v].append(int(m[3]))
for (f, s), d in rows.items():
    print(f"{f:6} {s:>11}  " + " ".join(f"{x:4d}" for x in d["base"]) + "  | " + " ".join(f"{x:4d}" for x in d["new"]))
PY
echo "done: $(date -u) (started $(head -1 "$OUT/when.txt"))"
