"""Samples per thread and per frame name of one raw py-spy profile: python pyspy_threads.py FILE."""
import sys, collections
f=sys.argv[1]
threads=collections.Counter(); funcs=collections.Counter(); total=0
sub=collections.Counter()
for line in open(f):
    line=line.rstrip()
    if not line: continue
    stack,_,n=line.rpartition(' ')
    n=int(n); total+=n
    frames=stack.split(';')
    thread=frames[0]
    threads[thread.split(' ')[0] + ' ' + (thread.split('"')[1] if '"' in thread else thread)]+=n
    s=stack
    for key in ['sink.py:write','arrow (','insert_arrow','dedup_settings','processing.py:handle','snapshot (','dumps (','_pickle','kafka_consumer','windows.py','decode (','validate (','tick (','lz4','aiokafka','_write (','take_refused','_hold','flush (','select','getaddrinfo']:
        if key in s: sub[key]+=n
print('total samples', total)
for k,v in threads.most_common(12): print(f'{v:6d} {100*v/total:5.1f}%  {k}')
print('--- contains')
for k,v in sub.most_common(): print(f'{v:6d} {100*v/total:5.1f}%  {k}')
