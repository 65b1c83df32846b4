"""The per-alert stamps of trace.patch: python alert_stamps.py DIR (DIR holding t.bench, t.<pid>, t.d<pid>)."""
import json,glob,sys
D=sys.argv[1]  # the folder of the trace files (TRAINMON_ALERT_TRACE's prefix there: t)
bench=[json.loads(l) for l in open(D+'/t.bench')]
d=sorted([json.loads(l) for f in glob.glob(D+'/t.d*') for l in open(f)],key=lambda x:x['t'])
w=sorted([json.loads(l) for f in glob.glob(D+'/t.[0-9]*') for l in open(f)],key=lambda x:x['t'])
for b in bench:
    if b['offered']>300000: continue
    out=[]
    for wall,starts,state,rule in b['alerts']:
        if state!='firing' or rule!='loss_non_finite': continue
        rel=lambda t: round((t-starts)*1000) if t else None
        sub=next((x['t'] for x in d if x.get('s')==starts and x['ev']=='submit'),None)
        pub=next((x['t'] for x in w if x['ev']=='published' and starts in x['starts']),None)
        out.append((rel(wall),rel(pub),rel(sub)))
    print('run: lat, pass1 published, dispatched')
    for o in sorted(out,reverse=True)[:8]: print('  ',o)
    print('   median pass1', sorted(o[1] for o in out)[len(out)//2], 'median pass2 (dispatch - pass1)', sorted(o[2]-o[1] for o in out)[len(out)//2])
