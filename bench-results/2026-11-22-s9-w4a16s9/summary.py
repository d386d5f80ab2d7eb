"""Medians of the timing lines of a w4a16s9 device call's results (run in the results folder)."""
import glob
import re
import statistics
import sys

variants = sys.argv[1:] or ["base", "new", "nocl", "start", "exit"]
def runs(v):
    return sorted(glob.glob(f"kt_{v}[0-9].txt"))
pat = re.compile(r"^KT_W4A16 (\S+) (\S+) m=(\d+) .*?us=([0-9.]+)")
data = {}
for v in variants:
    for f in runs(v):
        for line in open(f):
            mt = pat.match(line)
            if mt:
                kind, name, m, us = mt.groups()
                data.setdefault((v, kind, name, int(m)), []).append(float(us))
for kind in ["hot", "hot_pdl", "graph", "graph_pdl", "pair", "pair_pdl", "seq", "seq_pdl", "cold"]:
    for m in [1, 2, 4, 8, 16]:
        for v in variants:
            cells = [(n, statistics.median(u)) for (vv, k, n, mm), u in sorted(data.items())
                     if vv == v and k == kind and mm == m]
            if cells:
                print(f"{kind} {v} m={m}: " + " ".join(f"{n}={u:.2f}" for n, u in cells))
