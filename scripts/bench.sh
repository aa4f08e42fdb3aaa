#!/usr/bin/env bash
# Performance figures against a reference measured in the same run, on this machine (the load
# generator shares its cores): a release node on a temp data dir, auth off, seeded through the
# bulk endpoints with BENCH_ITEMS items and BENCH_USERS users (5 clicks each), trained; then
#   1. cached recommendations (GET /v1/users/{id}/recommendations?k=10, every user warmed) against
#      nginx serving a static file of the same bytes, both under wrk (2 threads, 32 connections);
#      and the node's p99 at 8 connections, a lighter load;
#   2. a mixed load, 20% POST /v1/events (each fsynced before 202, each invalidating its user) and
#      80% reads over every user, against the same nginx figure, with the cache hit rate under it.
# It prints a table and asserts nothing. Needs wrk and nginx (Debian: apt-get install wrk
# nginx-light); BENCH_SECONDS (default 10) per run. With BENCH_PERF_DIR set, each streamrec run
# at 32 connections is also sampled with perf (Debian: linux-perf; software clock, DWARF call
# graphs) and the hottest symbols written to BENCH_PERF_DIR/{cached,mixed}.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

ITEMS="${BENCH_ITEMS:-50000}"
USERS="${BENCH_USERS:-20000}"
SECS="${BENCH_SECONDS:-10}"
for tool in wrk nginx; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || {
        echo "bench: $tool is missing (apt-get install wrk nginx-light)" >&2
        exit 1
    }
done
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

# The whole workspace, as CI builds it: a package subset unifies features differently.
cargo build --release --workspace --bins >&2
target="${CARGO_TARGET_DIR:-target}/release"
dir="$(mktemp -d)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port="$(free_port)"
nport="$(free_port)"
url="http://127.0.0.1:$port"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$dir"' EXIT

say() { printf 'bench: %s\n' "$*" >&2; }

STREAMREC__AUTH__ENABLED=false STREAMREC__AUTH__RATE_LIMIT_PER_SECOND=0 \
    "$target/streamrec" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" 2>"$dir/node.log" &
pids+=($!)
for _ in $(seq 1 300); do
    curl -fs "$url/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done

say "seeding $ITEMS items and $USERS users (5 clicks each) through the bulk endpoints"
python3 - "$dir" "$ITEMS" "$USERS" <<'PY'
import json, random, sys
d, items, users = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(1)
with open(f"{d}/items.ndjson", "w") as f:
    for i in range(items):
        f.write(json.dumps({"item_id": f"i{i}", "title": f"item {i}", "categories": [f"c{i % 20}"]}) + "\n")
with open(f"{d}/events.ndjson", "w") as f:
    for u in range(users):
        for k in range(5):
            # Each user leans to one category, so that the model has something to learn.
            item = (u % 20) + 20 * rng.randrange(items // 20) if rng.random() < 0.8 else rng.randrange(items)
            f.write(json.dumps({"event_id": f"s{u}-{k}", "user_id": f"u{u}", "item_id": f"i{item}", "kind": "click"}) + "\n")
PY
"$target/streamrec" import items "$dir/items.ndjson" --url "$url" >/dev/null 2>"$dir/import.log"
"$target/streamrec" import events "$dir/events.ndjson" --url "$url" >/dev/null 2>>"$dir/import.log"
say "training"
started=$(date +%s.%N)
curl -fs -X POST "$url/v1/admin/train" >/dev/null
until curl -fs "$url/v1/admin/train" | python3 -c 'import json,sys; t=json.load(sys.stdin); sys.exit(0 if not t["running"] and t["last_version"] else 1)'; do
    sleep 0.5
done
train_secs=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")

# Reads cycle over every user; thread t of n takes users t, t+n, t+2n, ...
cat >"$dir/reads.lua" <<'LUA'
local n = 0
function setup(thread) thread:set("id", n); n = n + 1 end
function init(args)
    counter = 0
    users = tonumber(os.getenv("BENCH_USERS"))
    threads = tonumber(os.getenv("BENCH_THREADS"))
    write_share = tonumber(os.getenv("BENCH_WRITE_SHARE") or "0")
    math.randomseed(id + 1)
end
function request()
    counter = counter + 1
    if write_share > 0 and math.random() < write_share then
        local u = math.random(0, users - 1)
        local body = string.format(
            '{"events":[{"event_id":"b%d-%d","user_id":"u%d","item_id":"i%d","kind":"click"}]}',
            id, counter, u, math.random(0, 999))
        return wrk.format("POST", "/v1/events", {["Content-Type"] = "application/json"}, body)
    end
    local u = ((counter - 1) * threads + id) % users
    return wrk.format("GET", "/v1/users/u" .. u .. "/recommendations?k=10")
end
LUA
export BENCH_USERS="$USERS" BENCH_THREADS=2

# `wrk --latency` output → "requests/s p99_ms"
run_wrk() {
    local conns="$1" secs="$2" target_url="$3"
    shift 3
    wrk -t2 -c"$conns" -d"${secs}s" --latency "$@" "$target_url" 2>&1 | tee -a "$dir/wrk.log" | python3 -c '
import re, sys
text = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(f"{rps:.0f} {p99:.2f} {non2xx.group(1) if non2xx else 0}")'
}

hits() {
    curl -fs "$url/metrics" | python3 -c '
import re, sys
c = {}
for line in sys.stdin:
    m = re.match(r"streamrec_cache_lookups_total\{(.*)\} (\S+)", line)
    if m:
        labels = dict(re.findall(r"(\w+)=\"([^\"]*)\"", m.group(1)))
        c[(labels["tier"], labels["result"])] = float(m.group(2))
hits = c.get(("l1", "hit"), 0) + c.get(("l2", "hit"), 0)
lookups = c.get(("l1", "hit"), 0) + c.get(("l1", "miss"), 0)
print(f"{hits:.0f} {lookups:.0f}")'
}

# Warm until a whole pass finds (nearly) every list cached: a cold read scores the catalogue, so
# one fixed-length pass covers only part of the users when the catalogue is large.
say "warming every user's cached list"
for pass in $(seq 1 20); do
    read -r h0 l0 < <(hits)
    run_wrk 32 5 "$url" -s "$dir/reads.lua" >/dev/null
    read -r h1 l1 < <(hits)
    misses=$(python3 -c "print(int(($l1 - $l0) - ($h1 - $h0)))")
    say "warm-up pass $pass: $misses misses in $(python3 -c "print(int($l1 - $l0))") lookups"
    python3 -c "import sys; sys.exit(0 if $misses <= 0.001 * max($l1 - $l0, 1) else 1)" && break
done

# nginx serves a static file of the bytes a cached answer has.
mkdir -p "$dir/www" "$dir/nginx"
curl -fs "$url/v1/users/u1/recommendations?k=10" >"$dir/www/rec.json"
cat >"$dir/nginx.conf" <<CONF
worker_processes 2;
daemon off;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $dir/nginx/body;
    proxy_temp_path $dir/nginx/proxy;
    fastcgi_temp_path $dir/nginx/fastcgi;
    uwsgi_temp_path $dir/nginx/uwsgi;
    scgi_temp_path $dir/nginx/scgi;
    server {
        listen 127.0.0.1:$nport;
        root $dir/www;
        location / { default_type application/json; }
    }
}
CONF
"$NGINX" -c "$dir/nginx.conf" -e "$dir/nginx/error.log" &
pids+=($!)
for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$nport/rec.json" >/dev/null 2>&1 && break
    sleep 0.1
done

# `profiled NAME command...`: runs the command, sampling the node meanwhile when BENCH_PERF_DIR is set.
profiled() {
    local name="$1"
    shift
    if [ -z "${BENCH_PERF_DIR:-}" ]; then
        "$@"
        return
    fi
    mkdir -p "$BENCH_PERF_DIR"
    perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p "${pids[0]}" \
        -o "$BENCH_PERF_DIR/$name.data" -- sleep "$SECS" 2>/dev/null &
    local perf_pid=$!
    "$@"
    wait "$perf_pid" || true
    perf report -i "$BENCH_PERF_DIR/$name.data" --no-children --sort symbol --stdio 2>/dev/null \
        | grep -v '^$' | head -400 >"$BENCH_PERF_DIR/$name.txt" || true
}

say "1. cached reads against nginx"
read -r nginx_rps nginx_p99 _ < <(run_wrk 32 "$SECS" "http://127.0.0.1:$nport/rec.json")
read -r cached_rps cached_p99 cached_bad < <(profiled cached run_wrk 32 "$SECS" "$url" -s "$dir/reads.lua")
read -r light_rps light_p99 _ < <(run_wrk 8 "$SECS" "$url" -s "$dir/reads.lua")
say "2. mixed load: 20% writes"
read -r h0 l0 < <(hits)
read -r mixed_rps mixed_p99 mixed_bad < <(BENCH_WRITE_SHARE=0.2 profiled mixed run_wrk 32 "$SECS" "$url" -s "$dir/reads.lua")
read -r h1 l1 < <(hits)
rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/${pids[0]}/status")

python3 - <<PY
nginx, cached, light, mixed = $nginx_rps, $cached_rps, $light_rps, $mixed_rps
hit = ($h1 - $h0) / max($l1 - $l0, 1)
print(f"streamrec bench: {$ITEMS} items, {$USERS} users, wrk -t2, {$SECS} s per run, $(nproc) cores shared with the load generator")
print(f"training {$train_secs} s; node resident memory after the runs {$rss_kib / 1024:.0f} MiB")
print()
print("| figure | streamrec | reference (nginx, same bytes) | ratio | goal |")
print("|---|---|---|---|---|")
print(f"| 1. cached reads, 32 connections | {cached:,.0f} req/s, p99 {$cached_p99} ms | {nginx:,.0f} req/s, p99 {$nginx_p99} ms | {cached / nginx:.2f}x | >= 0.5x |")
print(f"| 1. cached reads, 8 connections | {light:,.0f} req/s, p99 {$light_p99} ms | | {light / nginx:.2f}x | p99 <= 2 ms at half load |")
print(f"| 2. mixed, 20% writes | {mixed:,.0f} req/s, p99 {$mixed_p99} ms, cache hit rate {hit:.1%} | {nginx:,.0f} req/s | {mixed / nginx:.2f}x | >= 0.25x, p99 <= 10 ms |")
bad = $cached_bad + $mixed_bad
if bad:
    print(f"\n{bad} responses were not 2xx: see the node's log")
PY
