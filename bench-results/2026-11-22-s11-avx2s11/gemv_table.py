"""Best-of-N GB/s per (format, shape) from kt-bench matmul text outputs: base | new."""
import collections
import re
import sys

d = collections.defaultdict(lambda: collections.defaultdict(list))
for path in sys.argv[1:]:
    v = "new" if ("_new_" in path or "_t0_" in path) else "base"
    for line in open(path):
        m = re.match(r"(\S+)\s+(\d+x\d+)\s+1\s+(\S+)\s+(\S+)\s+(\d+)%", line)
        if m:
            d[(m[1], m[2])][v].append(float(m[4]))
for (f, s), x in d.items():
    b, n = x["base"], x["new"]
    print(
        f"{f:6} {s:>10}  base {' '.join(f'{y:5.1f}' for y in b)} | new {' '.join(f'{y:5.1f}' for y in n)}"
        f"  best {max(b):.1f} -> {max(n):.1f} ({max(n) / max(b) - 1:+.0%})"
    )
