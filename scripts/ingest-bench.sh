#!/usr/bin/env bash
# Kafka ingestion benchmark: starts the broker (scripts/services.sh), builds release binaries and
# runs `ingest`, which times kcat, a bare consumer and a streamrec node on the same topic.
# Extra arguments go to `ingest` (e.g. --events 500000).
#
# Debian's kcat links Debian's librdkafka (2.0), which fails against tansu; it runs here on the
# librdkafka that the PyPI confluent-kafka wheel ships, installed into the tool cache.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${STREAMREC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/streamrec}"
TOOLS="$CACHE/tools"
scripts/services.sh up kafka
eval "$(scripts/services.sh env)"

command -v kcat >/dev/null || {
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq kcat >/dev/null
}
[ -x "$TOOLS/venv/bin/python" ] || python3 -m venv "$TOOLS/venv"
"$TOOLS/venv/bin/python" -c 'import confluent_kafka' 2>/dev/null \
    || "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check 'confluent-kafka==2.12.*'
libs="$(ls -d "$TOOLS"/venv/lib/python3*/site-packages/confluent_kafka.libs | head -1)"
mkdir -p "$TOOLS/kcat-lib"
ln -sf "$(ls "$libs"/librdkafka*.so* | head -1)" "$TOOLS/kcat-lib/librdkafka.so.1"
cat >"$TOOLS/kcat" <<SH
#!/bin/sh
LD_LIBRARY_PATH="$TOOLS/kcat-lib:$libs" exec kcat "\$@"
SH
chmod +x "$TOOLS/kcat"

# PROFILE=dev reuses the test build (dependencies optimised, workspace crates not).
profile="${PROFILE:-release}"
cargo build --profile "$profile" --workspace --bins
dir="$profile"; [ "$profile" = dev ] && dir=debug
target="${CARGO_TARGET_DIR:-target}/$dir"
"$target/ingest" --brokers "${STREAMREC_TEST_KAFKA#kafka://}" --streamrec "$target/streamrec" \
    --kcat "$TOOLS/kcat" "$@"
