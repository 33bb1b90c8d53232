#!/usr/bin/env python3
"""Fresh-NAR upload comparison: the same new NARs uploaded to atticd and garretd.
Usage: compare_upload.py ATTIC_BASE GARRET_BASE WORKDIR (needs WORKDIR/fresh-*.nar, tok.attic, nixenv/cmp.sk)"""
import hashlib, http.client, json, os, subprocess, sys, urllib.parse
A, G, WD = sys.argv[1:4]
ADMIN = open(os.path.join(WD, "tok.attic")).read().strip()
SK = open(os.path.join(WD, "nixenv/cmp.sk")).read().strip()
nars = sorted(f for f in os.listdir(WD) if f.startswith("fresh-") and f.endswith(".nar"))
dep = [f for f in nars if "-dep-" in f][0]; top = [f for f in nars if "-top-" in f][0]
def req(base, method, path, body=None, headers=None):
    u = urllib.parse.urlparse(base); c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    h = {"Authorization": "Bearer " + ADMIN}; h.update(headers or {})
    if isinstance(body, dict): body = json.dumps(body).encode(); h["Content-Type"] = "application/json"
    c.request(method, path, body=body, headers=h); r = c.getresponse(); d = r.read()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, d
def info(f, refs):
    data = open(os.path.join(WD, f), "rb").read(); b = f[len("fresh-"):-4]
    return data, {"cache": "fresh", "store_path_hash": b[:32], "store_path": "/nix/store/" + b,
                  "references": refs, "system": None, "deriver": None, "sigs": [], "ca": None,
                  "nar_hash": "sha256:" + hashlib.sha256(data).hexdigest(), "nar_size": len(data)}
for name, base in [("atticd", A), ("garretd", G)]:
    print("=====", name)
    print("create:", req(base, "POST", "/_api/v1/cache-config/fresh", {"keypair": {"Keypair": SK}, "is_public": False, "store_dir": "/nix/store", "priority": 41, "upstream_cache_key_names": []})[0])
    d, i = info(dep, [])
    st, h, body = req(base, "PUT", "/_api/v1/upload-path", d, {"X-Attic-Nar-Info": json.dumps(i)})
    print("PUT upload-path dep (144 B, new NAR, header):", st, h.get("content-type"), body.decode())
    t, ti = info(top, [dep[len("fresh-"):-4]])
    pre = json.dumps(ti).encode()
    st, h, body = req(base, "PUT", "/_api/v1/upload-path", pre + t, {"X-Attic-Nar-Info-Preamble-Size": str(len(pre))})
    print("PUT upload-path top (3000728 B, new NAR, preamble):", st, h.get("content-type"), body.decode())
    st, h, body = req(base, "PUT", "/_api/v1/upload-path", t, {"X-Attic-Nar-Info": json.dumps(ti)})
    print("PUT upload-path top again (existing NAR):", st, body.decode())
    for f in (dep, top):
        hsh = f[len("fresh-"):][:32]
        st, h, ni = req(base, "GET", "/fresh/%s.narinfo" % hsh)
        print("GET narinfo", hsh, st); print("  " + ni.decode().replace("\n", "\n  "))
        url = [l[5:] for l in ni.decode().splitlines() if l.startswith("URL: ")][0]
        st, h, nar = req(base, "GET", "/fresh/" + url)
        raw = subprocess.run(["zstd", "-dc"], input=nar, capture_output=True).stdout
        print("GET", url, st, h.get("content-type"), "compressed=%d" % len(nar), "decompressed sha256 matches NAR:",
              hashlib.sha256(raw).hexdigest() == hashlib.sha256(open(os.path.join(WD, f), "rb").read()).hexdigest(),
              "headers:", {k: v for k, v in h.items() if k not in ("date",)})
    print("destroy:", req(base, "DELETE", "/_api/v1/cache-config/fresh")[0])
