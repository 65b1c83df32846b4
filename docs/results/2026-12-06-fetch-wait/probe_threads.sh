#!/bin/bash
# per-thread CPU of the process matching $1, over $2 seconds: % of a core by thread name
PID=$(pgrep -f "$1" | head -1)
snap() { for t in /proc/$PID/task/*; do echo "$(basename $t) $(cat $t/comm 2>/dev/null | tr ' ' _) $(awk '{print $14+$15}' $t/stat 2>/dev/null)"; done; }
snap > <temporary dir>/t0; sleep $2; snap > <temporary dir>/t1
python3 - "$2" <<'PY'
import sys,collections
d=float(sys.argv[1])
a={l.split()[0]:(l.split()[1],int(l.split()[2])) for l in open('<temporary dir>/t0') if len(l.split())==3}
b={l.split()[0]:(l.split()[1],int(l.split()[2])) for l in open('<temporary dir>/t1') if len(l.split())==3}
c=collections.Counter()
for tid,(n,v) in b.items(): c[n]+=v-a.get(tid,(n,0))[1]
tot=sum(c.values())
print(f"total {tot/d:.2f} % of a core")
for n,v in c.most_common(12): print(f"  {v/d:6.2f}  {n}")
PY
