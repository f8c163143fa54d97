#!/usr/bin/env python3
# Issue 13: the idle-connection and unauthenticated-body floods against a collector binary
# (`python3 floods_old_vs_new.py BINARY old|new`: old = commit 2df13dc, new = this tree).
"""Old vs new collector under the issue-13 attacks. Usage: old-vs-new.py BINARY NAME"""
import json, os, resource, socket, sqlite3, subprocess, sys, tempfile, threading, time, urllib.request, hashlib

binary, name = sys.argv[1], sys.argv[2]
d = tempfile.mkdtemp()
db = os.path.join(d, "c.db")

def start(nofile):
    def lim():
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    p = subprocess.Popen([binary, "--db", db, "serve", "--listen", "127.0.0.1:0"],
                         stderr=subprocess.PIPE, text=True, preexec_fn=lim)
    while True:
        l = p.stderr.readline()
        if "listening on" in l:
            addr = l.strip().split("http://")[1]
            threading.Thread(target=lambda: p.stderr.read(), daemon=True).start()
            return p, addr
        if not l:
            raise SystemExit("did not start")

def reviewer():
    sub = ["reviewer", "add", "r"] if name == "new" else ["reviewer", "r"]
    return subprocess.run([binary, "--db", db] + sub, capture_output=True, text=True).stdout.strip()

def legit(addr, token, timeout=15):
    t = time.time()
    try:
        r = urllib.request.urlopen(urllib.request.Request(f"http://{addr}/v1/hosts", headers={"Authorization": f"Bearer {token}"}), timeout=timeout)
        return r.status, time.time() - t
    except Exception as e:
        return str(e)[:60], time.time() - t

def hwm(p):
    for l in open(f"/proc/{p.pid}/status"):
        if l.startswith("VmHWM"):
            return int(l.split()[1]) // 1024

resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
# 1. idle connections at the usual 1,024-descriptor limit
p, addr = start(1024)
tok = reviewer()
host, port = addr.split(":")
idle = []
fails = 0
for _ in range(1500):
    try:
        s = socket.create_connection((host, int(port)), timeout=0.3); idle.append(s)
    except Exception:
        fails += 1
        if fails > 20: break
print(f"{name}: 1,500 idle connections ({len(idle)} connected): legitimate request ->", legit(addr, tok), "alive:", p.poll() is None)
for s in idle: s.close()
p.kill(); p.wait()
# 2. 200 concurrent unauthenticated 8 MiB bodies
p, addr = start(4096)
tok = reviewer()
chunk = b"x" * (1 << 20)
def flood(i):
    try:
        s = socket.create_connection((host, int(addr.split(':')[1])), timeout=60)
        auth = "" if i % 2 == 0 else "Authorization: Bearer nope\r\n"
        s.sendall(f"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}Content-Length: {8<<20}\r\n\r\n".encode())
        for _ in range(8): s.sendall(chunk)
        s.recv(100)
    except Exception:
        pass
ts = [threading.Thread(target=flood, args=(i,)) for i in range(200)]
t0 = time.time()
for t in ts: t.start()
time.sleep(0.5)
during = legit(addr, tok)
for t in ts: t.join()
print(f"{name}: 200 unauthenticated 8 MiB bodies in {time.time()-t0:.1f} s: legitimate request during ->", during, f"peak RSS {hwm(p)} MiB")
p.kill(); p.wait()
