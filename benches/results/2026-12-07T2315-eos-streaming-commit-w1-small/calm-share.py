import glob,sys
def pct(v,p):
    v=sorted(v); return v[min(len(v)-1,int(p*len(v)))] if v else float('nan')
for f in sorted(glob.glob(sys.argv[1]+'/*/runs/*-latency.txt.gz')):
    rows=[]
    import gzip
    for line in gzip.open(f,"rt"):
        if line.startswith('#'): continue
        s,p,e,sh=line.split(); rows.append((int(s),int(e)/1000,int(sh)/1000))
    t0=min(r[0] for r in rows)
    # windows of 0.5 s with a source stall (>300 ms hop)
    stall=set(int((s-t0)/5e8) for s,e,sh in rows if e-sh>300)
    calm=[sh for s,e,sh in rows if not ({int((s-t0)/5e8)-k for k in (0,1,2)} & stall)]
    allsh=[sh for s,e,sh in rows]; e2e=[e for s,e,sh in rows]
    name=f.split('/')[-3]+' '+f.split('/')[-1].split('-')[0]
    print(f"{name:22} n={len(rows)} stall_windows={len(stall):3} e2e p99={pct(e2e,.99):7.1f} share p50/p99={pct(allsh,.5):6.1f}/{pct(allsh,.99):6.1f} calm n={len(calm)} share p50/p99={pct(calm,.5):6.1f}/{pct(calm,.99):6.1f}")
