#!/usr/bin/env bash
# Quick start: installs etcd if missing, builds etcdgate, and runs `etcdgate dev` (a local
# 3-member etcd cluster with etcdgate in front on 127.0.0.1:23790). Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-etcd.sh >&2
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/etcdgate-target}"
exec cargo run --release -p etcdgate -- dev "$@"
