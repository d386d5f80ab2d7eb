import json,re,collections,sys
f=sys.argv[1] if len(sys.argv)>1 else 'moe.txt'
best=collections.defaultdict(lambda: [1e9,1e9]); n=collections.Counter()
for line in open(f):
    m=re.match(r'round=(\d) isa=(\S+) fmt=(\S+) tokens=(\d+) bin=(\S+) (.*)',line)
    if not m: continue
    try: d=json.loads(m.group(6))
    except Exception: continue
    k=(m.group(2),m.group(3),int(m.group(4)),m.group(5))
    n[k]+=1
    best[k][0]=min(best[k][0],d['ms_per_call']); best[k][1]=min(best[k][1],d['cpu_ms_per_call'])
print('V2-Lite MoE layer, 2 threads: best wall ms / best CPU ms per call (rounds), base -> new, CPU ratio')
for isa in ['avx2','avx512','amx']:
    for fmt in ['q4_k','q5_k']:
        for tok in [1,512]:
            b=best.get((isa,fmt,tok,'base')); nn=best.get((isa,fmt,tok,'new'))
            if b and nn: print(f'{isa:6} {fmt} tokens {tok:<4} {b[0]:9.2f} / {b[1]:9.2f} ({n[(isa,fmt,tok,"base")]}) -> {nn[0]:9.2f} / {nn[1]:9.2f} ({n[(isa,fmt,tok,"new")]})  {nn[1]/b[1]:5.2f}x')
