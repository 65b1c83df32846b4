import os, sys, time, collections
def snap(pid):
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
            name = stat[stat.index("(")+1:stat.rindex(")")]
            f = stat[stat.rindex(")")+2:].split()
            out[tid] = (name, int(f[11]) + int(f[12]))
        except OSError:
            pass
    return out
pids = [int(p) for p in sys.argv[2:]]
secs = float(sys.argv[1])
a = {p: snap(p) for p in pids}
time.sleep(secs)
b = {p: snap(p) for p in pids}
hz = os.sysconf("SC_CLK_TCK")
for p in pids:
    agg = collections.Counter()
    for tid, (name, t) in b[p].items():
        agg[name] += t - a[p].get(tid, (name, 0))[1]
    total = sum(agg.values())
    print(f"pid {p}: {100*total/hz/secs:.2f} % of a core")
    for name, t in agg.most_common(12):
        print(f"   {100*t/hz/secs:6.2f}  {name}")
