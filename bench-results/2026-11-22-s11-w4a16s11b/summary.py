"""Medians of the w4a16s11b device call's timing lines (run in its results folder): kt_base<i>.txt (main,
c942479) and kt_new<i>.txt (this branch), hot / hot_pdl / graph / seq per shape and token count, and the hot
ratios against torch.txt (TORCH_FP16 hot lines)."""
import glob
import re
import statistics

pat = re.compile(r"^KT_W4A16 (\S+) (\S+) m=(\d+) (?:n=\d+ k=\d+ )?(?:auto k_ways=\d+ slices=\d+ )?us=([0-9.]+)")
data = {}
for v in ["base", "new"]:
    for f in sorted(glob.glob(f"kt_{v}[0-9].txt")):
        for line in open(f):
            mt = pat.match(line)
            if mt:
                kind, name, m, us = mt.groups()
                data.setdefault((v, kind, name, int(m)), []).append(float(us))
torch = {}
for line in open("torch.txt") if glob.glob("torch.txt") else []:
    mt = re.match(r"^TORCH_FP16 hot (\S+) m=(\d+) .*?us=([0-9.]+)", line)
    if mt:
        torch[(mt.group(1), int(mt.group(2)))] = float(mt.group(3))
for kind in ["hot", "hot_pdl", "graph", "seq", "cold"]:
    for m in [1, 8, 12, 16]:
        names = sorted({n for (v, k, n, mm) in data if k == kind and mm == m})
        cells = []
        for n in names:
            b = data.get(("base", kind, n, m))
            w = data.get(("new", kind, n, m))
            if not b or not w:
                continue
            mb, mw = statistics.median(b), statistics.median(w)
            c = f"{n}={mb:.2f}->{mw:.2f}({100 * (mw / mb - 1):+.1f}%)"
            t = torch.get((n, m)) if kind == "hot" else None
            if t:
                c += f"[torch {t:.2f}: {t / mb:.2f}x->{t / mw:.2f}x]"
            cells.append(c)
        if cells:
            print(f"{kind} m={m}: " + " ".join(cells))
