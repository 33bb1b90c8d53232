#!/usr/bin/env bash
# Mints the token test vectors in server/garretd/tests/vectors/ with implementations that
# are not Garret's: OpenSSL for the RSA key, PyJWT for the tokens (Attic's claim layout,
# ../shared/spec/attic-protocol.md §3.3). The tests read only the committed files, so this
# runs once, by hand:
#
#   python3 -m venv /tmp/jwtvenv && /tmp/jwtvenv/bin/pip install pyjwt cryptography
#   PYTHON=/tmp/jwtvenv/bin/python bash tools/token-vectors/mint.sh
#
# Re-running makes a new RSA key (and so new RS256 tokens); the HS256 secret is fixed.
set -euo pipefail
out="$(cd "$(dirname "$0")/../.." && pwd)/server/garretd/tests/vectors"
py="${PYTHON:-python3}"
mkdir -p "$out"

# A fixed HS256 secret: the base64 value is what the server is given; the key is its bytes.
printf '%s' 'garret-independent-oracle-hs256-secret-not-for-production' | base64 -w0 >"$out/hs256-secret.b64"

# An RSA key from OpenSSL (PKCS#8 PEM), given to garretd as base64 of the whole PEM text.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$out/rs256-key.pem"

"$py" - "$out" <<'PY'
import base64, json, pathlib, sys
import jwt  # PyJWT

out = pathlib.Path(sys.argv[1])
ns = "https://jwt.attic.rs/v1"
# Far-future expiry (2100-01-01), nbf in the past; Attic's letters as integers 0/1.
claims = {
    "sub": "pyjwt-oracle",
    "exp": 4102444800,
    "nbf": 1700000000,
    ns: {
        "caches": {
            "oracle-ro": {"r": 1},
            "oracle-*": {"r": 1, "w": 1, "cc": 1, "cr": 1, "cq": 1, "cd": 1},
        }
    },
}
secret = base64.b64decode((out / "hs256-secret.b64").read_text().strip())
(out / "hs256.jwt").write_text(jwt.encode(claims, secret, algorithm="HS256") + "\n")
key = (out / "rs256-key.pem").read_text()
(out / "rs256.jwt").write_text(jwt.encode(claims, key, algorithm="RS256") + "\n")
(out / "claims.json").write_text(json.dumps(claims, indent=2) + "\n")
print("PyJWT", jwt.__version__)
PY
