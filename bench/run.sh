#!/bin/bash
# Run every benchmark and write docs/benchmarks.md. Root only: it creates a
# service account, a sudoers drop-in, a zfs-fuse pool and an sshd of its own,
# all removed at the end. Installs what it needs first (Debian packages, the
# project and py-spy in the virtualenv).
#
#   bench/run.sh [--quick] [--output FILE] [--agent-tree DIR] [--profile DIR]
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
VENV=${HOST_AGENT_VENV:-$REPO/.venv}

if [[ $(id -u) != 0 ]]; then
    echo "$0: run as root (it creates a user, sudoers, a zfs pool and an sshd)" >&2
    exit 2
fi

# sshd: openssh-server; ssh, ssh-keygen: openssh-client; pgrep: procps; runuser: util-linux.
needed=(sudo zfs-fuse openssh-server openssh-client procps util-linux passwd python3-venv)
missing=()
for package in "${needed[@]}"; do
    dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
if (( ${#missing[@]} )); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[[ -x $VENV/bin/python ]] || /usr/bin/python3 -m venv "$VENV"
# The benchmarks reuse the root tests' helpers (tests/system.py imports pytest).
if ! "$VENV/bin/python" -c "import host_agent, pytest" 2>/dev/null || [[ ! -x $VENV/bin/py-spy ]]
then
    log=$(mktemp)
    if ! "$VENV/bin/pip" install -q -e ".[test]" py-spy >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
fi

if pgrep -x zfs-fuse >/dev/null; then
    echo "bench: zfs-fuse is already running; if its owner stops it mid-run, zfs figures fail" >&2
fi
exec "$VENV/bin/python" -m bench "$@"
