"""Per format and shape: each run's GB/s (base runs | new runs) and best new / best base, from
kt-bench matmul text outputs named <prefix>_{base,new}_{1,2,3}.txt. Usage: gemv_table.py DIR PREFIX [col]
(col: 'gbs' for GB/s of weights, 'bw' for % of the run's probe)."""
import collections, re, sys
d, prefix = sys.argv[1], sys.argv[2]
col = sys.argv[3] if len(sys.argv) > 3 else "gbs"
rows = collections.OrderedDict()
for v in ("base", "new"):
    for i in (1, 2, 3):
        try:
            lines = open(f"{d}/{prefix}_{v}_{i}.txt").read().splitlines()
        except OSError:
            continue
        for line in lines:
            m = re.match(r"(\S+)\s+(\d+x\d+)\s+1\s+\S+\s+(\S+)\s+(\d+)%", line)
            if m:
                x = float(m[3]) if col == "gbs" else int(m[4])
                rows.setdefault((m[1], m[2]), {"base": [], "new": []})[v].append(x)
for (f, s), r in rows.items():
    b, n = r["base"], r["new"]
    ratio = f"{max(n) / max(b):.3f}" if b and n and col == "gbs" else ""
    print(f"{f:6} {s:>11}  " + " ".join(f"{x:5}" for x in b) + "  | " + " ".join(f"{x:5}" for x in n) + f"  {ratio}")
