#!/usr/bin/env bash
# A cluster of streamrec nodes on this machine, to see what a cluster does (who owns which
# partition, requests forwarded to the owner, a killed node's users moving to the others) without
# Kubernetes: N nodes in one Kafka consumer group on the broker scripts/services.sh starts.
#
#   scripts/cluster.sh up [N]   start node-1..node-N (default 3) on 127.0.0.1:8081..8080+N, each
#                               that is not already running; wait until each is ready and the
#                               cluster has settled, then print the status
#   scripts/cluster.sh status   each node's pid, address and readiness, and the shard map
#                               (`streamrec inspect --cluster`) as one node sees it
#   scripts/cluster.sh token    print an admin token the nodes accept, for curl or the console
#   scripts/cluster.sh down     stop every node with SIGTERM (the broker stays up: stop it with
#                               scripts/services.sh down kafka)
#
# Everything lives under data/cluster: node-I/ (node I's data dir), node-I.log, node-I.pid, the
# secrets generated once (`secret`, the cluster secret nodes present to each other; `auth-secret`,
# the HS256 key of the tokens `token` mints) and cluster.toml, the settings the nodes share,
# rewritten on every `up`. STREAMREC__* variables in the environment override them. Only events
# are shared: each node keeps its own embedded catalog, models and cache unless the environment
# names shared ones (STREAMREC__CATALOG__URL, STREAMREC__OBJECTS__URL, STREAMREC__CACHE__URL).
#
# The binary is the newer of release and debug streamrec under $CARGO_TARGET_DIR (else target/),
# built once if neither exists; STREAMREC_BIN names another. STREAMREC_CLUSTER_BASE_PORT (8080)
# moves the ports: node I listens on base + I.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=data/cluster
BASE_PORT="${STREAMREC_CLUSTER_BASE_PORT:-8080}"
# Long enough for a node's graceful shutdown (server.shutdown_grace, 30 s by default).
STOP_TIMEOUT=60

say() { printf 'cluster: %s\n' "$*"; }
fail() {
    printf 'cluster: %s\n' "$*" >&2
    exit 1
}

# Waits until `$2...` succeeds, for at most $1 seconds.
wait_for() {
    local limit=$1
    shift
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.5
    done
}

port_of() { echo $((BASE_PORT + $1)); }
url_of() { echo "http://127.0.0.1:$(port_of "$1")"; }
pid_of() { cat "$DIR/node-$1.pid" 2>/dev/null || true; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ready() { curl -fs -o /dev/null "$(url_of "$1")/readyz"; }

# Whether node $1 runs: its recorded pid is alive and still a streamrec node (a pid file left by a
# node that died, its pid since reused by another process, does not count).
running() {
    local pid args
    pid="$(pid_of "$1")"
    [ -n "$pid" ] || return 1
    args="$(ps -o args= -p "$pid" 2>/dev/null)" || return 1
    [[ $args == *"streamrec serve"* ]]
}

# The numbers of the nodes this script has started (pid files), in order.
known_nodes() {
    local file
    for file in "$DIR"/node-*.pid; do
        [ -e "$file" ] || continue
        file="${file##*/node-}"
        echo "${file%.pid}"
    done | sort -n
}

# The streamrec binary, or nothing.
find_binary() {
    if [ -n "${STREAMREC_BIN:-}" ]; then
        echo "$STREAMREC_BIN"
        return
    fi
    local target="${CARGO_TARGET_DIR:-target}" best="" candidate
    for candidate in "$target/release/streamrec" "$target/debug/streamrec"; do
        if [ -x "$candidate" ] && { [ -z "$best" ] || [ "$candidate" -nt "$best" ]; }; then
            best="$candidate"
        fi
    done
    echo "$best"
}

# The streamrec binary, built first if there is none. The whole workspace's features, as `make
# test` builds it: a package on its own unifies features differently and would rebuild RocksDB.
binary() {
    local bin
    bin="$(find_binary)"
    if [ -z "$bin" ]; then
        say "no streamrec binary yet: building one (the first build takes a while)" >&2
        cargo build --workspace --bin streamrec >&2
        bin="$(find_binary)"
    fi
    [ -x "$bin" ] || fail "no streamrec binary at ${bin:-target/*/streamrec}"
    echo "$bin"
}

# Creates secret file $1 once: 32 random bytes as hex, readable by this user only.
make_secret() {
    [ -s "$1" ] || (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32))' >"$1")
}

# An HS256 token with the admin role, valid for a day, signed with data/cluster/auth-secret.
token() {
    [ -s "$DIR/auth-secret" ] || fail "no cluster here yet: scripts/cluster.sh up"
    AUTH_SECRET="$(cat "$DIR/auth-secret")" python3 - <<'PY'
import base64, hashlib, hmac, json, os, time
enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = enc(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = enc(json.dumps({"sub": "cluster-admin", "roles": ["admin"], "exp": int(time.time()) + 86400}).encode())
sig = hmac.new(os.environ["AUTH_SECRET"].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
print(f"{head}.{body}.{enc(sig)}")
PY
}

# The consumer group of this run of the cluster. tansu (0.6) leaves a group that every member
# left at once (a `down`) in a state where no member that joins later is ever assigned a
# partition, so a cluster started with no node running joins a group of its own; a node added
# to a running cluster joins the running one's. The nodes' data dirs stay, and the new group
# starts from the topics' beginning: what the nodes already applied is dropped as duplicates.
group_of_run() {
    local i
    for i in $(seq 1 64); do
        if running "$i" && [ -f "$DIR/group" ]; then
            cat "$DIR/group"
            return
        fi
    done
    echo "local-cluster-$(date +%s)" | tee "$DIR/group"
}

# The settings every node shares: the broker, the topics and group, the secrets.
write_config() {
    local kafka=$1 group
    group="$(group_of_run)"
    (
        umask 077
        cat >"$DIR/cluster.toml" <<EOF
# Written by scripts/cluster.sh on every \`up\`; STREAMREC__* environment variables override it.
[events]
url = "$kafka"
topic_prefix = "local-cluster."
group = "$group"

[cluster]
secret = "$(cat "$DIR/secret")"

[auth]
hs256_secret = "$(cat "$DIR/auth-secret")"
EOF
    )
}

start_node() {
    local i=$1 bin=$2 port
    port="$(port_of "$i")"
    if running "$i"; then
        say "node-$i already running (pid $(pid_of "$i"), port $port)"
        return
    fi
    port_open "$port" && fail "port $port is taken by another process (STREAMREC_CLUSTER_BASE_PORT moves the nodes)"
    mkdir -p "$DIR/node-$i"
    # setsid: the node leaves this terminal's process group, so a Ctrl-C here does not stop it.
    STREAMREC__CLUSTER__NODE_ID="node-$i" STREAMREC__CLUSTER__ADVERTISE="127.0.0.1:$port" \
        setsid "$bin" serve --config "$DIR/cluster.toml" --data-dir "$DIR/node-$i" \
        --listen "127.0.0.1:$port" >>"$DIR/node-$i.log" 2>&1 </dev/null &
    echo $! >"$DIR/node-$i.pid"
    say "node-$i starting (pid $!, port $port, log $DIR/node-$i.log)"
}

wait_ready() {
    local i=$1 deadline=$((SECONDS + 120))
    until ready "$i"; do
        if ! running "$i"; then
            tail -n 30 "$DIR/node-$i.log" >&2 || true
            fail "node-$i exited (the end of its log is above)"
        fi
        [ $SECONDS -lt $deadline ] || fail "node-$i not ready after 120 s; see $DIR/node-$i.log"
        sleep 0.5
    done
}

# The shard map as node $1 sees it, as `streamrec inspect --cluster` prints it.
cluster_view() {
    STREAMREC_TOKEN="$(token)" "$BIN" inspect --cluster --url "$(url_of "$1")"
}

# Whether node $1 sees $2 members and every partition active.
settled() {
    local view partitions members_line=", $2 members?\$"
    view="$(cluster_view "$1")" || return 1
    [[ ${view%%$'\n'*} =~ $members_line ]] || return 1
    partitions="$(sed '1,/^partitions:/d' <<<"$view")"
    [ -n "$partitions" ] && ! grep -qv ' active$' <<<"$partitions"
}

up() {
    local n=${1:-3} i
    [[ $n =~ ^[1-9][0-9]*$ ]] || fail "usage: $0 up [N], N a number of nodes"
    scripts/services.sh up kafka
    local kafka
    kafka="$(scripts/services.sh env | sed -n 's/^export STREAMREC_TEST_KAFKA=//p')"
    [ -n "$kafka" ] || fail "scripts/services.sh env names no broker"
    BIN="$(binary)"
    mkdir -p "$DIR"
    make_secret "$DIR/secret"
    make_secret "$DIR/auth-secret"
    write_config "$kafka"
    for i in $(seq 1 "$n"); do
        start_node "$i" "$BIN"
    done
    for i in $(seq 1 "$n"); do
        wait_ready "$i"
    done
    for i in $(known_nodes); do
        if [ "$i" -gt "$n" ] && running "$i"; then
            say "node-$i is running too (scripts/cluster.sh down stops every node)"
        fi
    done
    # A member that joins moves partitions; the group settles within a few seconds.
    local members=0
    for i in $(known_nodes); do
        if running "$i"; then members=$((members + 1)); fi
    done
    if ! wait_for 90 settled 1 "$members"; then
        say "the cluster has not settled yet (every partition active on $members members)"
    fi
    status
}

status() {
    local i seen="" asked=""
    for i in $(known_nodes); do
        seen=1
        if running "$i"; then
            local state="not ready"
            ready "$i" && state=ready
            printf '  node-%s  pid %s  %s  %s\n' "$i" "$(pid_of "$i")" "$(url_of "$i")" "$state"
        else
            printf '  node-%s  down\n' "$i"
        fi
    done
    [ -n "$seen" ] || {
        say "no nodes (scripts/cluster.sh up [N] starts them)"
        return 0
    }
    BIN="$(find_binary)"
    for i in $(known_nodes); do
        running "$i" || continue
        echo
        echo "the cluster as node-$i sees it:"
        if [ -x "$BIN" ] && cluster_view "$i"; then
            asked=1
            break
        fi
        # Without a binary (or an answer), the raw view.
        curl -fsS -H "Authorization: Bearer $(token)" "$(url_of "$i")/v1/admin/cluster" && echo && asked=1 && break
    done
    [ -n "$asked" ] || say "no node answers"
    echo
    say "an admin token for curl or the console: scripts/cluster.sh token"
}

down() {
    local i pid stopping=()
    for i in $(known_nodes); do
        if running "$i"; then
            kill -TERM "$(pid_of "$i")"
            stopping+=("$i")
        else
            rm -f "$DIR/node-$i.pid"
        fi
    done
    for i in "${stopping[@]}"; do
        pid="$(pid_of "$i")"
        if ! wait_for "$STOP_TIMEOUT" bash -c "! kill -0 $pid"; then
            say "node-$i still running after ${STOP_TIMEOUT} s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$DIR/node-$i.pid"
        say "node-$i stopped"
    done
    say "every node is down (the broker is not: scripts/services.sh down kafka)"
}

case "${1:-}" in
    up) up "${2:-3}" ;;
    status) status ;;
    token) token ;;
    down) down ;;
    *)
        echo "usage: $0 up [N]|status|token|down" >&2
        exit 2
        ;;
esac
