#!/usr/bin/env python3
"""Send the same HTTP requests to a stock atticd and to garretd, print both responses.

Usage: compare.py ATTIC_BASE GARRET_BASE WORKDIR
WORKDIR holds tok.{attic,pull,other,expired,forged}, the NAR dumps (<basename>.nar),
nixenv/top and nixenv/cmp.sk (a Nix secret key named `cmp`).
Only loopback addresses are contacted.
"""
import base64
import hashlib
import http.client
import json
import os
import sys
import time
import urllib.parse

A_BASE, G_BASE, WD = sys.argv[1], sys.argv[2], sys.argv[3]
SERVERS = [("atticd", A_BASE), ("garretd", G_BASE)]

def rd(p):
    with open(os.path.join(WD, p)) as f:
        return f.read().strip()

TOK = {k: rd("tok." + k) for k in ["attic", "pull", "other", "expired", "forged"]}
TOP = rd("nixenv/top")
SK = rd("nixenv/cmp.sk")

def nar_info(path):
    base = os.path.basename(path)
    data = open(os.path.join(WD, base + ".nar"), "rb").read()
    return base, data

DEP = None
for f in os.listdir(WD):
    if f.endswith(".nar") and "-dep-" in f and f.split("-dep-")[1] == os.path.basename(TOP).split("-top-")[1] + ".nar":
        DEP = "/nix/store/" + f[:-4]
TOP_B, TOP_NAR = nar_info(TOP)
DEP_B, DEP_NAR = nar_info(DEP)

def upload_info(cache, path, nar, refs, nar_hash=None, nar_size=None):
    b = os.path.basename(path)
    return {
        "cache": cache,
        "store_path_hash": b[:32],
        "store_path": path,
        "references": refs,
        "system": None,
        "deriver": None,
        "sigs": [],
        "ca": None,
        "nar_hash": nar_hash or ("sha256:" + hashlib.sha256(nar).hexdigest()),
        "nar_size": nar_size if nar_size is not None else len(nar),
    }

def req(base, method, path, token=None, body=None, headers=None):
    u = urllib.parse.urlparse(base)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    h = dict(headers or {})
    if token:
        h["Authorization"] = "Bearer " + token
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    hdrs = {k.lower(): v for k, v in r.getheaders()}
    c.close()
    return r.status, hdrs, data

SHOW_HEADERS = ["content-type", "x-attic-cache-visibility", "location", "www-authenticate", "cache-control"]

def fmt_body(data, hdrs):
    if len(data) > 1500 or (data and b"\0" in data[:200]):
        return "<%d bytes sha256=%s>" % (len(data), hashlib.sha256(data).hexdigest())
    try:
        return data.decode()
    except UnicodeDecodeError:
        return "<%d bytes binary sha256=%s>" % (len(data), hashlib.sha256(data).hexdigest())

def norm(text, base):
    return text.replace(base.rstrip("/"), "<BASE>")

results = []

def both(label, method, path, token=None, body=None, headers=None, quiet=False):
    out = {}
    for name, base in SERVERS:
        b = body(name) if callable(body) else body
        st, hd, data = req(base, method, path, token, b, headers)
        out[name] = (st, {k: hd[k] for k in SHOW_HEADERS if k in hd}, fmt_body(data, hd), data)
    a, g = out["atticd"], out["garretd"]
    same = (a[0] == g[0] and a[1] == g[1] and norm(a[2], A_BASE) == norm(g[2], G_BASE))
    tok = [k for k, v in TOK.items() if v == token]
    reqdesc = "%s %s%s%s" % (method, path, (" [token=%s]" % tok[0]) if tok else " [anonymous]",
                             (" hdrs=%s" % json.dumps({k: (v if len(v) < 200 else v[:200] + "...") for k, v in (headers or {}).items()})) if headers else "")
    if body is not None and not callable(body) and not isinstance(body, bytes):
        reqdesc += " body=" + json.dumps(body)
    elif isinstance(body, bytes):
        reqdesc += " body=<%d bytes>" % len(body)
    print("=" * 100)
    print("[%s] %s  %s" % ("SAME" if same else "DIFF", label, reqdesc))
    for name in ["atticd", "garretd"]:
        st, hd, txt, _ = out[name]
        print("  %-8s %d %s" % (name, st, json.dumps(hd)))
        for line in norm(txt, dict(SERVERS)[name]).splitlines() or [""]:
            print("           | " + line)
    results.append((label, same))
    return out

ADMIN = TOK["attic"]
CREATE = {"keypair": {"Keypair": SK}, "is_public": False, "store_dir": "/nix/store",
          "priority": 41, "upstream_cache_key_names": ["cache.nixos.org-1"]}

both("root page status", "GET", "/", quiet=True)
both("create cache", "POST", "/_api/v1/cache-config/cmp", ADMIN, CREATE)
both("create existing cache", "POST", "/_api/v1/cache-config/cmp", ADMIN, CREATE)
both("create without cc right", "POST", "/_api/v1/cache-config/cmp2", TOK["pull"], CREATE)
both("create, anonymous", "POST", "/_api/v1/cache-config/cmp3", None, CREATE)
both("create, malformed body", "POST", "/_api/v1/cache-config/cmp4", ADMIN, b'{"is_public":1}', {"Content-Type": "application/json"})
both("create, invalid cache name", "POST", "/_api/v1/cache-config/-bad", ADMIN, CREATE)
both("cache-config GET admin", "GET", "/_api/v1/cache-config/cmp", ADMIN)
both("cache-config GET pull-only", "GET", "/_api/v1/cache-config/cmp", TOK["pull"])
both("cache-config GET other-namespace token", "GET", "/_api/v1/cache-config/cmp", TOK["other"])
both("cache-config GET anonymous", "GET", "/_api/v1/cache-config/cmp")
time.sleep(1.5)
both("cache-config GET expired token", "GET", "/_api/v1/cache-config/cmp", TOK["expired"])
both("cache-config GET forged token", "GET", "/_api/v1/cache-config/cmp", TOK["forged"])
both("cache-config GET garbage bearer", "GET", "/_api/v1/cache-config/cmp", "not-a-jwt")
both("attic-cache-info alias", "GET", "/cmp/attic-cache-info", ADMIN)
both("cache-config GET missing cache (admin)", "GET", "/_api/v1/cache-config/nosuch", ADMIN)
both("cache-config GET missing cache (anon)", "GET", "/_api/v1/cache-config/nosuch")
both("configure: empty patch", "PATCH", "/_api/v1/cache-config/cmp", ADMIN, {})
both("configure: priority", "PATCH", "/_api/v1/cache-config/cmp", ADMIN, {"priority": 42})
both("configure: retention", "PATCH", "/_api/v1/cache-config/cmp", ADMIN, {"retention_period": {"Period": 3600}})
both("configure: pull-only token", "PATCH", "/_api/v1/cache-config/cmp", TOK["pull"], {"priority": 43})
both("cache-config GET after configure", "GET", "/_api/v1/cache-config/cmp", ADMIN)
both("configure: retention Global", "PATCH", "/_api/v1/cache-config/cmp", ADMIN, {"retention_period": "Global"})

ABSENT = "0" * 31 + "1"
GMP = {"cache": "cmp", "store_path_hashes": [TOP_B[:32], DEP_B[:32], ABSENT]}
both("get-missing-paths (empty cache)", "POST", "/_api/v1/get-missing-paths", ADMIN, GMP)
both("get-missing-paths pull-only", "POST", "/_api/v1/get-missing-paths", TOK["pull"], GMP)
both("get-missing-paths anonymous", "POST", "/_api/v1/get-missing-paths", None, GMP)
both("get-missing-paths invalid hash", "POST", "/_api/v1/get-missing-paths", ADMIN, {"cache": "cmp", "store_path_hashes": ["e" * 32]})
both("get-missing-paths missing cache", "POST", "/_api/v1/get-missing-paths", ADMIN, {"cache": "nosuch", "store_path_hashes": []})

def up_hdr(info):
    return {"X-Attic-Nar-Info": json.dumps(info), "Content-Type": "application/octet-stream"}

info_dep = upload_info("cmp", DEP, DEP_NAR, [])
info_top = upload_info("cmp", TOP, TOP_NAR, [DEP_B])
both("upload-path dep (header)", "PUT", "/_api/v1/upload-path", ADMIN, DEP_NAR, up_hdr(info_dep))
both("upload-path top (header, chunked NAR)", "PUT", "/_api/v1/upload-path", ADMIN, TOP_NAR, up_hdr(info_top))
both("upload-path top again (dedup)", "PUT", "/_api/v1/upload-path", ADMIN, TOP_NAR, up_hdr(info_top))
pre = json.dumps(upload_info("cmp", DEP, DEP_NAR, [])).encode()
both("upload-path dep via preamble (dedup)", "PUT", "/_api/v1/upload-path", ADMIN, pre + DEP_NAR,
     {"X-Attic-Nar-Info-Preamble-Size": str(len(pre)), "Content-Type": "application/octet-stream"})
both("upload-path no nar-info header", "PUT", "/_api/v1/upload-path", ADMIN, DEP_NAR, {"Content-Type": "application/octet-stream"})
bad = upload_info("cmp", DEP, DEP_NAR, [], nar_hash="sha256:" + "11" * 32)
both("upload-path wrong nar_hash (new NAR)", "PUT", "/_api/v1/upload-path", ADMIN, DEP_NAR, up_hdr(bad))
badsz = upload_info("cmp", DEP, DEP_NAR, [], nar_size=len(DEP_NAR) + 1)
both("upload-path wrong nar_size (existing NAR)", "PUT", "/_api/v1/upload-path", ADMIN, DEP_NAR, up_hdr(badsz))
both("upload-path pull-only token", "PUT", "/_api/v1/upload-path", TOK["pull"], DEP_NAR, up_hdr(info_dep))
both("upload-path anonymous", "PUT", "/_api/v1/upload-path", None, DEP_NAR, up_hdr(info_dep))
both("upload-path malformed nar-info", "PUT", "/_api/v1/upload-path", ADMIN, DEP_NAR, {"X-Attic-Nar-Info": "{not json"})
both("get-missing-paths after upload", "POST", "/_api/v1/get-missing-paths", ADMIN, GMP)

both("nix-cache-info admin", "GET", "/cmp/nix-cache-info", ADMIN)
both("nix-cache-info pull-only", "GET", "/cmp/nix-cache-info", TOK["pull"])
both("nix-cache-info anonymous (private)", "GET", "/cmp/nix-cache-info")
both("nix-cache-info missing cache (admin)", "GET", "/nosuch/nix-cache-info", ADMIN)
out = both("narinfo top", "GET", "/cmp/%s.narinfo" % TOP_B[:32], ADMIN)
both("narinfo dep", "GET", "/cmp/%s.narinfo" % DEP_B[:32], ADMIN)
both("narinfo HEAD", "HEAD", "/cmp/%s.narinfo" % TOP_B[:32], ADMIN)
both("narinfo absent", "GET", "/cmp/%s.narinfo" % ABSENT, ADMIN)
both("narinfo absent HEAD", "HEAD", "/cmp/%s.narinfo" % ABSENT, ADMIN)
both("narinfo invalid hash", "GET", "/cmp/%s.narinfo" % ("e" * 32), ADMIN)
both("narinfo anonymous (private)", "GET", "/cmp/%s.narinfo" % TOP_B[:32])
both("narinfo other-namespace token", "GET", "/cmp/%s.narinfo" % TOP_B[:32], TOK["other"])
both(".ls listing", "GET", "/cmp/%s.ls" % TOP_B[:32], ADMIN)
urls = {}
for name in ["atticd", "garretd"]:
    for line in out[name][3].decode().splitlines():
        if line.startswith("URL: "):
            urls[name] = line[5:]
print("NAR URLs:", urls)
for name, base in SERVERS:
    st, hd, data = req(base, "GET", "/cmp/" + urls[name], ADMIN)
    print("  %-8s GET /cmp/%s -> %d %s len=%d sha256=%s (nar sha256 %s)" % (
        name, urls[name], st, json.dumps({k: hd[k] for k in SHOW_HEADERS if k in hd}), len(data),
        hashlib.sha256(data).hexdigest(), hashlib.sha256(TOP_NAR).hexdigest()))
both("NAR by attic-style URL", "GET", "/cmp/" + urls["atticd"], ADMIN)
both("NAR HEAD attic-style URL", "HEAD", "/cmp/" + urls["atticd"], ADMIN)
both("NAR absent", "GET", "/cmp/nar/%s.nar" % ABSENT, ADMIN)
both("NAR bad name", "GET", "/cmp/nar/foo", ADMIN)
both("configure: make public", "PATCH", "/_api/v1/cache-config/cmp", ADMIN, {"is_public": True})
both("nix-cache-info anonymous (public)", "GET", "/cmp/nix-cache-info")
both("narinfo anonymous (public)", "GET", "/cmp/%s.narinfo" % DEP_B[:32])
both("cache-config anonymous (public)", "GET", "/_api/v1/cache-config/cmp")
both("get-missing-paths anonymous (public)", "POST", "/_api/v1/get-missing-paths", None, GMP)
both("unknown API route", "GET", "/_api/v1/nonexistent", ADMIN)
both("unknown deep route", "GET", "/cmp/a/b/c", ADMIN)
both("PUT nix-cache-info (Nix's own push protocol)", "PUT", "/cmp/nix-cache-info", ADMIN, b"StoreDir: /nix/store\n", {"Content-Type": "text/x-nix-cache-info"})
both("destroy: pull-only token", "DELETE", "/_api/v1/cache-config/cmp", TOK["pull"])
both("destroy", "DELETE", "/_api/v1/cache-config/cmp", ADMIN)
both("destroy again", "DELETE", "/_api/v1/cache-config/cmp", ADMIN)
both("narinfo after destroy", "GET", "/cmp/%s.narinfo" % DEP_B[:32], ADMIN)

print()
print("SUMMARY: %d requests, %d identical, %d different" % (len(results), sum(1 for _, s in results if s), sum(1 for _, s in results if not s)))
for label, s in results:
    print("  %s %s" % ("same" if s else "DIFF", label))
