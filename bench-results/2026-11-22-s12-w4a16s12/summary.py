"""Medians of w4a16s12's timing lines (run in the results folder): kt_<variant><i>.txt, hot / hot_pdl /
graph / seq / cold per shape and token count, each variant against base, and the hot ratios against
torch.txt (TORCH_FP16 hot lines); test and memcheck results."""
import glob
import re
import statistics

pat = re.compile(r"^KT_W4A16 (\S+) (\S+) m=(\d+) (?:n=\d+ k=\d+ )?(?:auto k_ways=\d+ slices=\d+ )?us=([0-9.]+)")
data = {}
variants = []
for f in sorted(glob.glob("kt_*.txt")):
    v = re.match(r"kt_(.*?)\d\.txt", f.split("/")[-1]).group(1)
    if v not in variants:
        variants.append(v)
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
for f in sorted(glob.glob("tests_*.txt")) + sorted(glob.glob("memcheck_*.txt")):
    txt = open(f).read()
    res = re.findall(r"test result: [^\n]*", txt) + re.findall(r"ERROR SUMMARY: [^\n]*", txt)
    fails = re.findall(r"(?:panicked|FAILED)[^\n]*", txt)[:3]
    ex = re.findall(r"exit \d+ after \d+s|skipped[^\n]*", txt)
    print(f, "|", " ; ".join(r[:60] for r in res[-2:]), "|", ex, fails)
short = {"q_b_proj": "q_b", "kv_b_proj": "kv_b", "o_proj": "o", "shared_gate": "sh_in", "shared_down": "sh_out",
         "dense_gate": "d_in", "dense_down": "d_out", "floor": "floor", "layer": "layer"}
order = ["q_b_proj", "kv_b_proj", "shared_gate", "shared_down", "o_proj", "dense_gate", "dense_down", "floor", "layer", "shared", "dense"]
print("variants:", variants, "(medians; runs per variant:", {v: len(data.get((v, 'hot', 'q_b_proj', 1), [])) for v in variants}, ")")
for kind in ["hot", "graph", "hot_pdl", "graph_pdl", "pair", "pair_pdl", "seq", "cold"]:
    for m in [1, 8, 9, 12, 16]:
        names = [n for n in order if any((v, kind, n, m) in data for v in variants)]
        if not names:
            continue
        print(f"{kind} m={m}:")
        for n in names:
            b = data.get(("base", kind, n, m))
            cells = []
            for v in variants:
                x = data.get((v, kind, n, m))
                if not x:
                    continue
                med = statistics.median(x)
                c = f"{v} {med:.2f}"
                if b and v != "base":
                    c += f"({100 * (med / statistics.median(b) - 1):+.1f}%)"
                t = torch.get((n, m)) if kind == "hot" else None
                if t:
                    c += f"[{t / med:.2f}x]"
                cells.append(c)
            t = torch.get((n, m)) if kind == "hot" else None
            print(f"  {short.get(n, n)}" + (f" torch {t:.2f}" if t else "") + ": " + "  ".join(cells))
