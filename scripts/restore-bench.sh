#!/usr/bin/env bash
# Disaster recovery on this machine, measured: a node (debug build unless STREAMREC_BIN says
# otherwise) takes N users' events (default 100,000 users, E = 5 events each), snapshots its
# database to the S3 store that scripts/services.sh runs, is killed, loses its data dir, is
# restored with `streamrec restore` and started again. Prints the snapshot's size and upload
# time, the restore's time, and the time until the restored node is ready and serves a user:
# the parts of the RTO. Asserts nothing.
#   scripts/restore-bench.sh [N [E]]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-100000}"
E="${2:-5}"
TARGET="${CARGO_TARGET_DIR:-${STREAMREC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/streamrec}/target}"
BIN="${STREAMREC_BIN:-$TARGET/debug/streamrec}"
[ -x "$BIN" ] || { echo "restore-bench: build first (cargo build --workspace)"; exit 1; }
scripts/services.sh up s3 >/dev/null
eval "$(scripts/services.sh env)"

work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 20000))
url="http://127.0.0.1:$port"
export STREAMREC__AUTH__ENABLED=false
export STREAMREC__SERVER__LISTEN="127.0.0.1:$port"
export STREAMREC__OBJECTS__URL="s3://streamrec/restore-bench-$$"
export STREAMREC__OBJECTS__ENDPOINT="$STREAMREC_TEST_S3_ENDPOINT"
export STREAMREC__OBJECTS__SNAPSHOT_INTERVAL=0s
export STREAMREC__OBJECTS__ARCHIVE_INTERVAL=0s
export STREAMREC__SESSIONS__MAX_LIVE=10000
export STREAMREC__PII__KEYS__K1="MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
export STREAMREC__TELEMETRY__LOG_FORMAT=json
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }
ready() { curl -sf "$url/readyz" >/dev/null; }
wait_ready() { for _ in $(seq 1 1200); do ready && return 0; sleep 0.1; done; echo "node never ready"; exit 1; }

"$BIN" serve --data-dir "$work/data" >"$work/node.log" 2>&1 &
pid=$!
wait_ready
echo "restore-bench: posting $E events for each of $N users"
t="$(now)"
python3 - "$url" "$N" "$E" <<'PY'
import json, sys, urllib.request
url, n, e = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for k in range(e):
    for start in range(0, n, 1000):
        events = [{"event_id": f"e{u}-{k}", "user_id": f"user{u}",
                   "item_id": f"item{(u * 7 + k * 13) % 5000}", "kind": "click"}
                  for u in range(start, min(n, start + 1000))]
        req = urllib.request.Request(f"{url}/v1/events", json.dumps({"events": events}).encode(),
                                     {"content-type": "application/json"})
        urllib.request.urlopen(req).read()
PY
applied() { curl -sf "$url/v1/users/$1" | python3 -c "import json,sys; sys.exit(json.load(sys.stdin)['num_events'] != $E)"; }
for _ in $(seq 1 12000); do
    applied user0 2>/dev/null && applied "user$((N - 1))" 2>/dev/null && break
    sleep 0.1
done
echo "restore-bench: posted and applied in $(since "$t")s"
t="$(now)"
snapshot="$(curl -sf -X POST "$url/v1/admin/snapshots")"
took="$(since "$t")"
bytes="$(python3 -c 'import json,sys; print(sum(f["bytes"] for f in json.load(sys.stdin)["files"]))' <<<"$snapshot")"
echo "restore-bench: snapshot of $N sessions: $bytes bytes in ${took}s"
kill -9 "$pid"
rm -rf "$work/data"
t="$(now)"
"$BIN" restore --data-dir "$work/data" >"$work/restore.json"
echo "restore-bench: streamrec restore: $(since "$t")s"
t="$(now)"
"$BIN" serve --data-dir "$work/data" >>"$work/node.log" 2>&1 &
pid=$!
wait_ready
curl -sf "$url/v1/users/user0" >/dev/null
echo "restore-bench: restored node ready and serving: $(since "$t")s"
