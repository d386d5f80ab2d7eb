import json, sys, collections
o = sys.argv[1]
rows = [json.loads(l) for l in open(f"{o}/moe.jsonl")]
ph = ["route", "gate/up", "quant", "down", "combine"]
print("== AMX peak")
for j in rows:
    if j.get("amxpeak"):
        print("T%2d r%d amx %.1f TOP/s (%.2f/thr) vnni %.2f (%.3f/thr)" % (j["threads"], j["round"], j["amx_tops"], j["amx_tops"]/j["threads"], j["vnni_tops"], j["vnni_tops"]/j["threads"]))
print("== sweeps")
for tag in ["sweep", "sweep512"]:
    for shape in sorted({(j.get("shape"), j.get("gate")) for j in rows if j.get("shape")}):
        rs = [j for j in rows if j.get("tag") == tag and (j.get("shape"), j.get("gate")) == shape]
        if not rs: continue
        one = [j for j in rs if j["threads"] == min(r["threads"] for r in rs)][0]
        print(tag, shape, one["isa"])
        for j in sorted(rs, key=lambda j: j["threads"]):
            c = j.get("cpu_ms_per_call") or 0
            print("  T%2d %9.2f ms  cpu %8.1f  cpu/thr %7.1f  speedup %5.2f  eff %4.2f  cpu ratio %4.2f  dram %5.1f  peak %.2f  w %5.1f GB/s" % (
                j["threads"], j["ms_per_call"], c, c / j["threads"], one["ms_per_call"] / j["ms_per_call"],
                one["ms_per_call"] * one["threads"] / (j["ms_per_call"] * j["threads"]), c / (one.get("cpu_ms_per_call") or 1),
                j["dram_gbps"], j["peak_tops"], j["weight_gbps"]))
print("== phases (x)")
for j in rows:
    if j.get("xphases"):
        n = j["threads"]; pm = j["phase_ms"]; bm = j["busy_ms"]
        print("  %s T%2d %-10s" % (j["tag"], n, j.get("spec") or "-"), " ".join("%s %.2f%s" % (ph[i], pm[i], (" (busy %.0f%%)" % (100*bm[i]/n/pm[i])) if i in (1,3) and pm[i] else "") for i in range(5)))
print("== A/B and x variants")
for j in rows:
    if j.get("tag") in ("ab", "xab") and j.get("shape"):
        print("  %-4s %-4s %-14s %-16s %8.3f ms cpu %7.1f" % (j["bin"], j["tag"], j.get("prefetch") or "-", j["shape"], j["ms_per_call"], j.get("cpu_ms_per_call") or 0))
