#!/usr/bin/env bash
# Full test run, as CI does it (.ci/run): installs etcd 3.4 + 3.5 and the client libraries
# the client tests run, builds every target of the workspace, then runs every test with
# nextest. Tests start many real etcd processes, so at most two run at a time.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-etcd.sh
bash scripts/install-clients.sh

if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install cargo-nextest --locked
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/etcdgate-target}"
# Each clean clone builds the workspace crates anew; incremental state would only pile up.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

cargo build --workspace --all-targets
cargo nextest run --workspace --no-fail-fast --test-threads 2
