#!/usr/bin/env python3
# Issue 13: edit a stored record directly in the SQLite database and ask /v1/verify
# (`python3 tamper_old_vs_new.py BINARY old|new`).
import hashlib, json, os, sqlite3, subprocess, sys, tempfile, threading, urllib.request, uuid
binary, name = sys.argv[1], sys.argv[2]
d = tempfile.mkdtemp(); db = os.path.join(d, "c.db")
run = lambda *a: subprocess.run([binary, "--db", db, *a], capture_output=True, text=True)
secret = (run("enroll-secret").stdout if name == "old" else run("enroll-secret", "rotate").stdout).strip()
rev = (run("reviewer", "r") if name == "old" else run("reviewer", "add", "r")).stdout.strip()
p = subprocess.Popen([binary, "--db", db, "serve", "--listen", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True)
while True:
    l = p.stderr.readline()
    if "listening on" in l: addr = l.strip().split("http://")[1]; break
threading.Thread(target=lambda: p.stderr.read(), daemon=True).start()
def call(path, body=None, token=None):
    h = {"Content-Type": "application/json"}
    if token: h["Authorization"] = f"Bearer {token}"
    r = urllib.request.urlopen(urllib.request.Request(f"http://{addr}{path}", data=body.encode() if body else None, headers=h))
    return json.loads(r.read())
tok = call("/v1/enroll", json.dumps({"secret": secret, "host_id": "h1", "hostname": "h1"}))["token"]
prev = "0" * 64; lines = []
for s in range(1, 13):
    e = {"id": str(uuid.uuid4()), "time": "2026-12-01T10:00:00.000Z", "host_id": "h1", "hostname": "h1", "kind": "exec_denied", "seq": s, "prev_hash": prev}
    l = json.dumps(e, separators=(",", ":")); prev = hashlib.sha256(l.encode()).hexdigest(); lines.append(l)
call("/v1/events", '{"events":[' + ",".join(lines[:10]) + "]}", tok)
c = sqlite3.connect(db)
col = "json" if name == "old" else "raw"
c.execute(f"UPDATE events SET {col} = REPLACE({col}, 'exec_denied', 'exec_reported') WHERE seq = 5"); c.commit()
v = call("/v1/verify", token=rev)
print(name, "middle record edited: intact =", v["hosts"][0]["intact"])
call("/v1/events", '{"events":[' + ",".join(lines[10:]) + "]}", tok)
v = call("/v1/verify", token=rev)
print(name, "after later events: intact =", v["hosts"][0]["intact"])
p.kill()
