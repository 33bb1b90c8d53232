#!/usr/bin/env bash
# Regenerates the committed seed corpus (server/fuzz/corpus/<target>/seed-*): small valid
# inputs of each format. NARs come from `nix-store --dump` of small trees, tokens are signed
# with the fuzz targets' fixed HS256 secret. Not made here: nar_tree's seeds (structured
# `arbitrary` input, picked from a fuzzing run) and any input that once crashed a target,
# both kept next to the seeds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
C=corpus
mkdir -p $C/nar_validator $C/narinfo $C/store_path $C/nix32 $C/token $C/upload_info

# --- NARs (first byte: chunk size selector of the target) ---
t=$(mktemp -d); trap 'rm -rf "$t"' EXIT
printf 'hello\n' > "$t/file"
printf '#!/bin/sh\necho hi\n' > "$t/exe"; chmod +x "$t/exe"
ln -s /nix/store/xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello "$t/link"
mkdir -p "$t/dir/bin" "$t/dir/share/doc" "$t/dir/empty"
printf 'x' > "$t/dir/bin/a"; printf '' > "$t/dir/bin/b"; chmod +x "$t/dir/bin/a"
printf '12345678' > "$t/dir/share/doc/README"
ln -s ../bin/a "$t/dir/share/link"
: > "$t/emptyfile"
i=0
for p in file exe link dir emptyfile dir/empty; do
    { printf "\\x$(printf %02x $((i * 7 % 64)))"; nix-store --dump "$t/$p"; } > "$C/nar_validator/seed-${p//\//-}"
    i=$((i + 1))
done

# --- narinfo ---
H=xcp9cav49dmsjbwdjlmkjxj10gkpx553
N32=0c2kab5ailaapzl62sd9c8pd5d6mf6lf0md1kkdhc5a8y7m08d6z
HEX=df3404eaf1481506db9ca155e0a871d5b4d22e62a96961e8bf4ad1a8ca525330
cat > $C/narinfo/seed-full <<NI
StorePath: /nix/store/$H-hello-2.12
URL: nar/$H.nar
Compression: zstd
FileHash: sha256:$N32
FileSize: 1234
NarHash: sha256:$HEX
NarSize: 226552
References: $H-hello-2.12 0hjszid30ak3rkzvc3m94c3risg8wz2h-glibc-2.40
Deriver: 16mvl7v0ylzcg2n3xzjn41qhzbmgcn5i-hello-2.12.drv
System: x86_64-linux
Sig: cache.example.com-1:6wzr1QlOPHG+knFuJIaw+85Z5ivwbdI512JikexG+nQ7JDSZM2hw8zzlcLDXi9KpTyHzYFaUOdtcE1GnBfhCAQ==
CA: fixed:r:sha256:$N32
NI
cat > $C/narinfo/seed-minimal <<NI
StorePath: /nix/store/$H-x
URL: nar/$H.nar
NarHash: sha256-3zQE6vFIFQbbnKFV4KhxtbTSLmKpaWHov0rRqMpSUzA=
NarSize: 1
References: 
Deriver: unknown-deriver
CA: 
Unknown: kept out
NI
cat > $C/narinfo/seed-nix32 <<NI
StorePath: /opt/store/$H-a.b+c-1_2?=x
URL: https://example.com/nar/$H.nar.xz
Compression: xz
NarHash: sha256:$N32
NarSize: 18446744073709551615
Sig: a:b
Sig: c:d
CA: text:sha256:$N32
NI

# --- store paths ---
printf '/nix/store/%s-hello-2.12' $H > $C/store_path/seed-path
printf '%s-glibc-2.40' 0hjszid30ak3rkzvc3m94c3risg8wz2h > $C/store_path/seed-base
printf '%s' $H > $C/store_path/seed-hash
printf '/opt/my.store/%s-a+b-c.d_e?=f' $H > $C/store_path/seed-otherdir

# --- nix32 and hash strings ---
printf '%s' $N32 > $C/nix32/seed-nix32
printf 'sha256:%s' $N32 > $C/nix32/seed-typed-nix32
printf 'sha256:%s' $HEX > $C/nix32/seed-typed-hex
printf 'sha256-3zQE6vFIFQbbnKFV4KhxtbTSLmKpaWHov0rRqMpSUzA=' > $C/nix32/seed-sri
printf '%s' $H > $C/nix32/seed-storehash

# --- tokens: mode byte 0 = claims JSON signed by the target; 1 = a whole token; 2 = claims
# signed by the target, checked against a bound issuer and audience ---
NS='https://jwt.attic.rs/v1'
claims=(
  "{\"sub\":\"alice\",\"exp\":1900000000,\"nbf\":1700000000,\"iat\":1700000000,\"jti\":\"0b7e\",\"$NS\":{\"caches\":{\"team-*\":{\"r\":1,\"w\":1},\"oss\":{\"r\":1}}}}"
  "{\"sub\":\"ci\",\"iss\":\"garret\",\"aud\":[\"a\",\"b\"],\"$NS\":{\"caches\":{\"*\":{\"r\":1,\"w\":1,\"d\":1,\"cc\":1,\"cr\":1,\"cq\":1,\"cd\":1}}}}"
  "{\"exp\":1.9e9,\"aud\":\"x\",\"$NS\":{\"caches\":{}}}"
)
i=0
for c in "${claims[@]}"; do
    { printf '\x00'; printf '%s' "$c"; } > $C/token/seed-claims$i
    printf '\x01' > $C/token/seed-token$i
    python3 - "$c" >> $C/token/seed-token$i <<'PY'
import base64, hashlib, hmac, sys
b = lambda x: base64.urlsafe_b64encode(x).rstrip(b"=")
inp = b(b'{"alg":"HS256","typ":"JWT"}') + b"." + b(sys.argv[1].encode())
sig = hmac.new(b"garret-fuzz-fixed-hs256-secret-0123456789", inp, hashlib.sha256).digest()
sys.stdout.write((inp + b"." + b(sig)).decode())
PY
    i=$((i + 1))
done

{ printf '\x02'; printf '%s' "${claims[1]}"; } > $C/token/seed-bound1

# --- upload info ---
info="{\"cache\":\"team-ci\",\"store_path_hash\":\"$H\",\"store_path\":\"/nix/store/$H-hello-2.12\",\"references\":[\"$H-hello-2.12\",\"0hjszid30ak3rkzvc3m94c3risg8wz2h-glibc-2.40\"],\"system\":\"x86_64-linux\",\"deriver\":\"16mvl7v0ylzcg2n3xzjn41qhzbmgcn5i-hello-2.12.drv\",\"sigs\":[\"k-1:AAAA\"],\"ca\":\"fixed:r:sha256:$N32\",\"nar_hash\":\"sha256:$HEX\",\"nar_size\":226552}"
printf '%s' "$info" > $C/upload_info/seed-header
printf '%s\n%s' ${#info} "$info" > $C/upload_info/seed-preamble
printf '{"cache":"c","store_path_hash":"%s","store_path":"/nix/store/%s-x","references":[],"nar_hash":"sha256:%s","nar_size":1}' $H $H $N32 > $C/upload_info/seed-minimal
printf '{"cache":"c","store_path_hash":"%s","store_path":"/nix/store/%s-x","references":[],"ca":"","deriver":null,"nar_hash":"sha256:%s","nar_size":1}' $H $H $N32 > $C/upload_info/seed-nulls
