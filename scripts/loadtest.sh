#!/usr/bin/env bash
# Builds release binaries, starts a node on a temp data dir on a free loopback port, seeds it and
# drives it with `loadtest`. Extra arguments go to the load generator (e.g. --seconds 60).
set -euo pipefail
cd "$(dirname "$0")/.."
# The whole workspace, as CI builds it: a package subset unifies features differently and can
# force a rebuild of RocksDB.
cargo build --release --workspace --bins
target="${CARGO_TARGET_DIR:-target}/release"
dir="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
# Authentication stays on (its cost is part of every request); the per-caller rate limit is off
# because the load generator is one caller.
secret="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
export STREAMREC_TOKEN="$(python3 - "$secret" <<'PY'
import base64, hashlib, hmac, json, sys, time
enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = enc(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = enc(json.dumps({"sub": "loadtest", "roles": ["admin"], "exp": int(time.time()) + 86400}).encode())
sig = hmac.new(sys.argv[1].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
print(f"{head}.{body}.{enc(sig)}")
PY
)"
STREAMREC__AUTH__HS256_SECRET="$secret" STREAMREC__AUTH__RATE_LIMIT_PER_SECOND=0 \
    "$target/streamrec" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" 2>"$dir/node.log" &
node=$!
trap 'kill $node 2>/dev/null; wait $node 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 200); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
"$target/loadtest" --target "http://127.0.0.1:$port" --seed "$@"
