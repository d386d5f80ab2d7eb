#!/usr/bin/env python3
"""Per-node timeline of kt's hybrid decode graph replays from a cupti_trace CSV.

Usage: analyze.py TRACE.csv [--skip N] [--replays M]

Takes the records that ran inside a graph (graph id != 0), splits them into replays (a replay
starts where the first node of the graph runs again), drops the first N replays (warm-up) and
keeps M. Prints, per position in the replay: the node's name, its median duration and the
median gap since the previous node ended (what the GPU spent between the two: launch latency,
a stream wait, or the CPU's routed experts at a MoE hand-off). Then the per-MoE-layer split:
the GPU chain (from the return out of the CPU experts to the next hand-off, incl. its gaps)
and the CPU window (from the hand-off to the end of the wait for the experts), medians over
the replays and MoE layers.
"""
import csv
import statistics
import sys


def load(path):
    recs = []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            # comments, the header, and a last line cut short (the trace may be truncated)
            if len(row) < 8 or row[0].startswith("#") or row[0] == "what":
                continue
            what, start, end, graph, node, corr, stream = row[:7]
            name = ",".join(row[7:])
            if int(graph) == 0:
                continue
            recs.append((int(start), int(end), what, int(node), name))
    recs.sort()
    return recs


def split_replays(recs):
    if not recs:
        return []
    first = recs[0][3]
    replays, cur = [], []
    for r in recs:
        if r[3] == first and cur:
            replays.append(cur)
            cur = []
        cur.append(r)
    if cur:
        replays.append(cur)
    # keep replays of the usual length only (a partial one at the end of the trace)
    n = statistics.mode(len(r) for r in replays)
    return [r for r in replays if len(r) == n]


def short(name):
    for cut in ("(", "<"):
        if cut in name:
            name = name.split(cut)[0]
    return name[:48]


HANDOFF = ("kt_moe_gating_packed", "kt_moe_gating_packed_signal", "kt_add_norm_route_signal")
RETURN_NEW = "kt_wait_add2_rmsnorm_w32"


def main():
    args = sys.argv[1:]
    path = args[0]
    skip = int(args[args.index("--skip") + 1]) if "--skip" in args else 20
    keep = int(args[args.index("--replays") + 1]) if "--replays" in args else 20
    replays = split_replays(load(path))
    print(f"{path}: {len(replays)} whole replays; using {skip}..{skip + keep}")
    replays = replays[skip : skip + keep]
    if not replays:
        print("no replays to analyze")
        return
    n = len(replays[0])
    durs = [[(r[i][1] - r[i][0]) / 1e3 for r in replays] for i in range(n)]
    gaps = [[0.0] * len(replays)] + [
        [(r[i][0] - r[i - 1][1]) / 1e3 for r in replays] for i in range(1, n)
    ]
    totals = [(r[-1][1] - r[0][0]) / 1e3 for r in replays]
    print(f"replay span (first node start to last node end): median {statistics.median(totals):.1f} us, {n} nodes")
    names = [short(x[4]) if x[2] == "kernel" else f"{x[2]}:{x[4]}" for x in replays[0]]
    print(f"{'pos':>4} {'node':<50} {'dur_us':>8} {'gap_us':>8}")
    for i in range(n):
        print(f"{i:>4} {names[i]:<50} {statistics.median(durs[i]):8.2f} {statistics.median(gaps[i]):8.2f}")
    # per MoE layer: hand-off positions (the gating kernel), return positions
    hand = [i for i in range(n) if names[i] in HANDOFF]
    if not hand:
        return
    chain, cpu = [], []
    for rep in replays:
        for a, b in zip(hand, hand[1:]):
            g_end = rep[a][1]
            # the return: the new fused kernel, else the first memcpy host-to-device after a
            ret = next((j for j in range(a + 1, b) if short(rep[j][4]) == RETURN_NEW), None)
            if ret is not None:
                back = rep[ret][1]  # ends once the experts' flag is seen and the norm is done
            else:
                ret = next((j for j in range(a + 1, b) if rep[j][2] == "memcpy" and rep[j][4].startswith("kind1")), None)
                if ret is None:
                    continue
                back = rep[ret][0]  # the copy back starts once the stream wait is over
            cpu.append((back - g_end) / 1e3)
            chain.append((rep[b][1] - back) / 1e3)
    if chain:
        print(f"per MoE layer (median over {len(chain)}): GPU chain from the return to the next hand-off's end "
              f"{statistics.median(chain):.1f} us (min {min(chain):.1f}); CPU window (hand-off end to the return) "
              f"{statistics.median(cpu):.1f} us (min {min(cpu):.1f})")


if __name__ == "__main__":
    main()
