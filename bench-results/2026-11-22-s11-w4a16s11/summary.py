"""Medians of the timing lines of the w4a16s11 device calls' results (run in a results folder): `summary.py
VARIANT...` reads kt_<variant><run>.txt (run = one digit; variant new0 = kt_new0<run>.txt)."""
import glob
import re
import statistics
import sys

variants = sys.argv[1:] or ["base", "new"]
pat = re.compile(r"^KT_W4A16 (\S+) (\S+) m=(\d+) .*?us=([0-9.]+)")
data = {}
for v in variants:
    for f in sorted(glob.glob(f"kt_{v}[0-9].txt")):
        for line in open(f):
            mt = pat.match(line)
            if mt:
                kind, name, m, us = mt.groups()
                data.setdefault((v, kind, name, int(m)), []).append(float(us))
for kind in ["hot", "hot_pdl", "graph", "pair", "seq", "cold"]:
    for m in [1, 8, 9, 12, 16]:
        for v in variants:
            cells = [(n, statistics.median(u), len(u)) for (vv, k, n, mm), u in sorted(data.items())
                     if vv == v and k == kind and mm == m]
            if cells:
                print(f"{kind} {v} m={m}: " + " ".join(f"{n}={u:.2f}" + ("" if c > 1 else "*") for n, u, c in cells))
