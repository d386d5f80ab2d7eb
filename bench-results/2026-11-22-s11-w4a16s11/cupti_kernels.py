"""Kernel durations of a CUPTI-traced cuda_w4a16_timing run (kt-bench/peers/cupti_trace), matched
to its stdout lines: `cupti_kernels.py TRACE.csv STDOUT.txt [COPY_GB_S]`. Needs KT_W4A16_TOKENS <= 16
(one kernel per GEMM call). Each stdout line of the example names a measurement whose launches are
consecutive small-m kernels: hot / hot_pdl / plan 5 + 100, pair 2 x 105, seq 7 x 105, cold 21 x 7
(its 8 lines printed after all), graph / graph_pdl 1 + 20 + 100 (the timed replays last).
Prints, per line, the event time from stdout, the median kernel duration (GPU start to end of
the timed launches) and the mean start-to-start period, and each as a fraction of the copy
bandwidth for the weights + scales."""
import csv
import re
import statistics
import sys

trace, stdout = sys.argv[1], sys.argv[2]
copy = float(sys.argv[3]) if len(sys.argv) > 3 else 3018.0
ks = []
with open(trace) as f:
    for row in csv.reader(f):
        if row and row[0] == "kernel" and row[-1].startswith("kt_w4a16_gemv"):
            ks.append((int(row[1]), int(row[2]), row[-1]))
ks.sort()
pat = re.compile(r"^KT_W4A16 (\S+) (\S+) m=(\d+)(?: n=(\d+) k=(\d+))?(.*?) us=([0-9.]+)")
lines = [pat.match(l) for l in open(stdout)]
lines = [m for m in lines if m]
pos = 0
cold_shapes = []


def stats(recs):
    d = [(e - s) / 1000.0 for s, e, _ in recs]
    per = [(recs[i + 1][0] - recs[i][0]) / 1000.0 for i in range(len(recs) - 1)]
    return statistics.median(d), (statistics.mean(per) if per else float("nan"))


print(f"{'kind':9} {'shape':12} {'m':>3} {'extra':26} {'event_us':>8} {'kern_us':>8} {'period':>8} "
      f"{'ev%':>5} {'kern%':>5} {'per%':>5}  kernel")
for mt in lines:
    kind, name, m, n, k, extra, us = mt.groups()
    us = float(us)
    if kind in ("hot", "hot_pdl", "plan"):
        recs = ks[pos + 5: pos + 105]
        pos += 105
    elif kind.startswith("pair"):
        pos += 210
        continue
    elif kind.startswith("seq"):
        pos += 735
        continue
    elif kind == "cold":
        if name == "layer":
            # the 8 cold lines: 21 rounds of the 7 shapes, the first a warm-up
            block = ks[pos: pos + 147]
            pos += 147
            for i, (cn, cm, cn_, ck, cus) in enumerate(cold_shapes):
                recs = block[7 + i::7]
                d = statistics.median([(e - s) / 1000.0 for s, e, _ in recs])
                b = int(cn_) * int(ck) / 2 + int(ck) // 128 * int(cn_) * 2
                print(f"{'cold':9} {cn:12} {cm:>3} {'':26} {cus:8.2f} {d:8.2f} {'':>8} "
                      f"{100 * b / (cus * 1e3) / copy:5.0f} {100 * b / (d * 1e3) / copy:5.0f} {'':>5}  {recs[0][2]}")
            cold_shapes.clear()
        else:
            cold_shapes.append((name, m, n, k, us))
        continue
    elif kind.startswith("graph"):
        recs = ks[pos + 21: pos + 121]
        pos += 121
    else:
        continue
    if not recs:
        print("ran out of kernel records at", kind, name, m)
        break
    d, per = stats(recs)
    b = int(n) * int(k) / 2 + int(k) // 128 * int(n) * 2
    print(f"{kind:9} {name:12} {m:>3} {extra.strip()[:26]:26} {us:8.2f} {d:8.2f} {per:8.2f} "
          f"{100 * b / (us * 1e3) / copy:5.0f} {100 * b / (d * 1e3) / copy:5.0f} {100 * b / (per * 1e3) / copy:5.0f}  {recs[0][2]}")
print(f"records used {pos} of {len(ks)}")
