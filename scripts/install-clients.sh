#!/usr/bin/env bash
# Installs the etcd client libraries the client tests run (crates/etcdgate/tests/clients.rs),
# pinned, into ${ETCDGATE_CLIENTS_DIR:-$HOME/.cache/etcdgate-clients}:
#   venv/          python-etcd3 (gRPC) and etcd3gw (HTTP/JSON gateway), from PyPI
#   node_modules/  etcd3 (gRPC through @grpc/grpc-js), from the npm registry
# Idempotent: does nothing that is already done. Needs python3 (with venv) and node + npm;
# installs Debian's when missing.
set -euo pipefail

DIR="${ETCDGATE_CLIENTS_DIR:-$HOME/.cache/etcdgate-clients}"
PYTHON_PACKAGES=(etcd3==0.12.0 etcd3gw==2.7.0 grpcio==1.85.4 protobuf==7.36.2)
NODE_PACKAGES=(etcd3@1.1.2)

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
fi
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y "$@" || { $SUDO apt-get update && $SUDO apt-get install -y "$@"; }
}

mkdir -p "$DIR"
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    apt_install python3-venv
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi

python_stamp="$DIR/venv/installed-$(IFS=_; echo "${PYTHON_PACKAGES[*]}")"
if [ ! -e "$python_stamp" ]; then
    rm -rf "$DIR/venv"
    python3 -m venv "$DIR/venv"
    "$DIR/venv/bin/pip" install --quiet --disable-pip-version-check "${PYTHON_PACKAGES[@]}"
    touch "$python_stamp"
fi

node_stamp="$DIR/node_modules/installed-$(IFS=_; echo "${NODE_PACKAGES[*]}")"
if [ ! -e "$node_stamp" ]; then
    rm -rf "$DIR/node_modules" "$DIR/package.json" "$DIR/package-lock.json"
    npm install --silent --no-audit --no-fund --prefix "$DIR" "${NODE_PACKAGES[@]}"
    touch "$node_stamp"
fi

echo "etcd clients: $DIR (python: ${PYTHON_PACKAGES[*]}; node: ${NODE_PACKAGES[*]})"
