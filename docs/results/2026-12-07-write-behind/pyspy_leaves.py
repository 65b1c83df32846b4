"""Leaf frames per thread of two raw py-spy profiles side by side: python pyspy_leaves.py BASE NEW."""
import sys, collections
def load(f):
    c=collections.Counter(); t=0
    for line in open(f):
        stack,_,n=line.rstrip().rpartition(' ')
        n=int(n); t+=n
        fr=stack.split(';')
        thread=fr[0].split('): ')[-1]
        leaf=fr[-1].split(' (')[0]
        c[(thread[:22], leaf)]+=n
    return c,t
a,ta=load(sys.argv[1]); b,tb=load(sys.argv[2])  # base, new: raw py-spy files
keys=set(a)|set(b)
rows=sorted(keys,key=lambda k:-(a[k]+b[k]))
print(f"{'thread':24s}{'leaf':40s}{'base':>6s}{'new':>6s}")
for k in rows[:40]: print(f"{k[0]:24s}{k[1][:38]:40s}{a[k]:6d}{b[k]:6d}")
