#!/usr/bin/env bash
# One device call for decode latency (builds nothing; run from the repo root with the binaries
# carried in .device-carry/): machine facts, the pool's job round trip, GEMV at 1 token on the
# DeepSeek shapes x six formats, and one MoE layer call at 1 token (V2-Lite with llama.cpp's Q4_K_M
# mix, V3 Q4_K, and both shapes in the repacked int4-g128 layout), all at THREADS threads.
# A/B in the same call: when .device-carry/kt-bench-base exists (e.g. main before a change), every
# case runs again on it after the new binary's cases.
# Results: $OUT/decode/{new,base}/{machine.json,pool.jsonl,matmul.jsonl,moe.jsonl}, errors.txt, and
# a side-by-side summary on stdout. About 75 s per binary on the 16-core device.
set -uo pipefail
dir=${BIN:-.device-carry}
threads=${THREADS:-$(nproc)}
root=${OUT:-/tmp/kt-out}/decode
secs=${SECONDS_PER_CASE:-0.25}
moe_secs=${MOE_SECONDS:-0.5}
moe_shapes=${MOE_SHAPES:-deepseek-v2-lite deepseek-v3}
formats=q4_k,q5_k,q2_k,q6_k,q8_0,bf16
# out x in: V3 expert gate/up and down, V2-Lite expert gate/up and down, V3 dense up and down.
shapes=2048x7168,7168x2048,1408x2048,2048x1408,18432x7168,7168x18432
mkdir -p "$root"
lscpu > "$root/lscpu.txt" 2>&1
bins=new
[ -x "$dir/kt-bench-base" ] && bins="new base"
for b in $bins; do
  exe="$dir/kt-bench"
  [ "$b" = base ] && exe="$dir/kt-bench-base"
  o="$root/$b"; mkdir -p "$o"
  err="$o/errors.txt"; : > "$err"
  echo "== $b: $exe" >&2
  "$exe" machine --threads "$threads" --json > "$o/machine.json" 2>>"$err"
  # The bare round trip (one item per thread) needs --items-per-thread, which older binaries lack.
  { "$exe" pool --threads "$threads" --json --jobs 20000 --item-floats 0,2048
    "$exe" pool --threads "$threads" --json --jobs 20000 --item-floats 0 --items-per-thread 1; } > "$o/pool.jsonl" 2>>"$err"
  "$exe" matmul --threads "$threads" --formats "$formats" --shapes "$shapes" --tokens 1 \
    --seconds "$secs" --json > "$o/matmul.jsonl" 2>>"$err"
  : > "$o/moe.jsonl"
  for shape in $moe_shapes; do
    for fmt in q4_k int4; do
      "$exe" moe --shape "$shape" --format "$fmt" --group 128 --tokens 1 --threads "$threads" \
        --seconds "$moe_secs" --json >> "$o/moe.jsonl" 2>>"$err"
    done
  done
done
python3 - "$root" $bins <<'PY'
import json, os, sys
root, bins = sys.argv[1], sys.argv[2:]
def rows(b, name):
    p = os.path.join(root, b, name)
    if not os.path.exists(p):
        return []
    return [json.loads(l) for l in open(p) if l.strip().startswith("{")]
for b in bins:
    m = rows(b, "machine.json")
    if m:
        print(f"{b}: read bandwidth {m[0]['dram_gbps']:.1f} GB/s, {m[0]['threads']} threads, isa {m[0]['isa']}")
print("\npool (us per job):", " | ".join(b for b in bins))
for b in bins:
    for r in rows(b, "pool.jsonl"):
        print(f"  {b:4} items {r['items']:4} floats {r['item_floats']:5}: kt {r['kt_pool_us']:7.2f}  rayon {r['rayon_us']:7.2f}")
def table(name, key, fields):
    per = {b: {key(r): r for r in rows(b, name) if "skipped" not in r} for b in bins}
    print(f"\n{name}: " + "  ".join(f"{b} ms, of bw" for b in bins))
    for k in per[bins[0]]:
        cells = []
        for b in bins:
            r = per[b].get(k)
            cells.append(f"{r['ms_per_call']:8.4f} {100 * r['bandwidth_fraction']:4.0f}%" if r else f"{'-':>14}")
        print(f"  {' '.join(map(str, k)):40} " + "  ".join(cells))
table("matmul.jsonl", lambda r: (r["format"], f"{r['rows']}x{r['cols']}"), None)
table("moe.jsonl", lambda r: (r["shape"], r["gate"], r["down"]), None)
PY
