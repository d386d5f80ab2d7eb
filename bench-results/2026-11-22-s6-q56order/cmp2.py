import json,glob,collections,sys
d0=sys.argv[1] if len(sys.argv)>1 else 'matmul'
def load(pat):
    best=collections.defaultdict(lambda: 1e9); n=0
    for f in glob.glob(f'{d0}/{pat}'):
        n+=1
        for line in open(f):
            line=line.strip()
            if not line.startswith('{'): continue
            d=json.loads(line)
            if 'skipped' in d: continue
            k=(d['format'],d['rows'],d['cols'],d['tokens'])
            best[k]=min(best[k],d['ms_per_call'])
    return best,n
for isa in ['avx2','avx512','amx']:
    b,nb=load(f'{isa}-base-*.json'); n,nn=load(f'{isa}-new-*.json')
    print(f'== KT_ISA={isa}: ms per call, best of {nb} (base fc3b061) / {nn} (new)')
    for k in sorted(b):
        if k in n: print(f'{k[0]:5} {k[1]:5}x{k[2]:<5} tokens {k[3]:<4} {b[k]:9.3f} -> {n[k]:9.3f}  {n[k]/b[k]:5.2f}x')
