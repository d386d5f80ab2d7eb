#!/usr/bin/env bash
# Session 24 call H: the AVX512 one-token GEMV's prefetch lead, in one process (knob x24b, KT_X_AB): 0 = main (the
# same super-block of each stream's next row), 3 = 1 KiB ahead in the stream, 6 = 1.5 KiB, 4 = 2 KiB. Branch x24b
# (main at the session's final MoE code plus the knob) at COMMIT.
set -uo pipefail
E=$OUT/h; mkdir -p $E; trap "cd $OUT && tar czf h.tgz h && rm -rf h" EXIT
X=/tmp/ktx; mkdir -p $X && tar xJf .device-carry/s24xh/bin.tar.xz -C $X
t0=$SECONDS; log() { echo "$* $((SECONDS-t0))s" | tee -a $E/summary.txt; }
log "device: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); $(cat .device-carry/s24xh/COMMIT); $(nproc) cpus"
V=0,3,6,4
for r in 1 2; do
  KT_X_AB=$V timeout 200 $X/kt-bench matmul --formats q4_k,q5_k,q6_k,q8_0,q2_k \
    --shapes 2048x7168,7168x2048,1408x2048,18432x7168 --tokens 1 --threads 16 --seconds 0.3 > $E/mm_$r.txt 2>&1
  log "mm $r rc $?"
  for s in deepseek-v3 deepseek-v2-lite; do
    KT_X_AB=$V timeout 90 $X/kt-bench moe --shape $s --format q4_k --tokens 1 --threads 16 --seconds 3 > $E/moe_${s}_$r.txt 2>&1
    log "moe $s $r rc $? $(grep -o 'read bandwidth [0-9.]* GB/s' $E/moe_${s}_$r.txt) $(grep x_variant $E/moe_${s}_$r.txt | awk '{print $2"="$4}' | tr '\n' ' ')"
  done
done
python3 - $E <<'PY' | tee $E/table.txt
import sys, re, collections
E = sys.argv[1]
t = collections.defaultdict(dict)
for r in (1, 2):
    for l in open(f'{E}/mm_{r}.txt'):
        m = re.match(r'v(\d+) dev \S+ (\S+)\s+(\S+)\s+1\s+([\d.]+)', l)
        if m: t[(m.group(2), m.group(3))].setdefault(int(m.group(1)), []).append(float(m.group(4)))
for k, v in t.items():
    b = v[0]
    print(k[0], k[1], ' '.join(f'v{x}:' + '/'.join(f'{y / b0 - 1:+.1%}' for y, b0 in zip(v[x], b)) for x in (3, 6, 4)), 'main ms', '/'.join(f'{y:.4f}' for y in b))
PY
log done
