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
"$target/streamrec" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" 2>"$dir/node.log" &
node=$!
trap 'kill $node 2>/dev/null; wait $node 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 200); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
"$target/loadtest" --target "http://127.0.0.1:$port" --seed "$@"
