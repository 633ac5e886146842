#!/bin/bash
# Bring up a working host-agent on 127.0.0.1 on a fresh Debian machine, as root:
# certificates, an unprivileged service account allowed (by sudoers) to run only
# the wrappers, a small file-backed ZFS pool served by zfs-fuse, and a real
# `zfs snapshot` done by `curl --cert`. Everything lives in .demo/ except the
# account, the sudoers drop-in and the pool; `scripts/demo.sh stop` removes them.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=$REPO/.demo
USER_NAME=host-agent-demo
POOL=hademo
PORT=${HOST_AGENT_DEMO_PORT:-18443}
SUDOERS=/etc/sudoers.d/host-agent-demo

say() { printf '\n== %s\n' "$*"; }

stop() {
    if [[ -f $STATE/agent.pid ]]; then
        kill "$(cat "$STATE/agent.pid")" 2>/dev/null || true
        rm -f "$STATE/agent.pid"
    fi
    zpool destroy -f "$POOL" 2>/dev/null || true
    if [[ -f $STATE/zfs-fuse.pid ]]; then
        kill "$(cat "$STATE/zfs-fuse.pid")" 2>/dev/null || true
        rm -f "$STATE/zfs-fuse.pid"
    fi
    rm -f "$SUDOERS"
    userdel "$USER_NAME" 2>/dev/null || true
    echo "demo stopped (audit log kept in $STATE/audit.jsonl)"
}

if [[ ${1:-} == stop ]]; then
    stop
    exit 0
fi
[[ $(id -u) == 0 ]] || { echo "run as root: it creates a user, a sudoers drop-in and a pool" >&2; exit 1; }

say "Debian packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq python3-venv sudo zfs-fuse curl procps >/dev/null

say "virtualenv with host-agent"
[[ -x $STATE/venv/bin/python ]] || { mkdir -p "$STATE" && /usr/bin/python3 -m venv "$STATE/venv"; }
"$STATE/venv/bin/pip" install -q "$REPO"
HA=$STATE/venv/bin/host-agent

say "certificates"
if [[ ! -f $STATE/pki/ca.crt ]]; then
    "$HA" certs init "$STATE/pki"
    "$HA" certs client "$STATE/pki" librarian-demo
fi

say "agent config"
cat > "$STATE/agent.toml" <<EOF
[server]
bind = "127.0.0.1:$PORT"
cert = "pki/server.crt"
key = "pki/server.key"
client_ca = "pki/ca.crt"
crl_file = "pki/crl.pem"

[runner]
service_user = "$USER_NAME"
wrapper_dir = "libexec"

[audit]
log_path = "audit.jsonl"

[approval]
store_path = "approvals.sqlite3"

[[agents]]
cn_pattern = "librarian*"
agent_type = "librarian"
unix_user = "$USER_NAME"
autonomy = "supervised"
allowed_operations = ["zfs-list", "zfs-snapshot"]
requires_approval_for = ["zfs-destroy"]

# Destroying always needs a person, whoever asks (docs/policy.md).
[[rules]]
operation = "zfs-destroy"
approval_required = true
always_ask = true

[zfs]
# snapshot/destroy/rollback act only on these (absent: on none).
allowed_datasets = ["$POOL/data", "$POOL/data/*"]

[binaries]
zfs = "$(command -v zfs)"
EOF
"$HA" check-config "$STATE/agent.toml"

say "service account, wrappers, sudoers"
id "$USER_NAME" >/dev/null 2>&1 \
    || useradd --system --no-create-home --shell /usr/sbin/nologin "$USER_NAME"
"$HA" wrappers-config --config "$STATE/agent.toml" --output "$STATE/wrappers.conf"
"$REPO/scripts/install-wrappers.sh" "$STATE/libexec" "$STATE/wrappers.conf" "$USER_NAME" "$SUDOERS"

say "zfs-fuse pool $POOL on a file"
if ! pgrep -x zfs-fuse >/dev/null; then
    zfs-fuse --no-daemon >/dev/null 2>&1 &
    echo $! > "$STATE/zfs-fuse.pid"
fi
if ! zpool list "$POOL" >/dev/null 2>&1; then
    truncate -s 128M "$STATE/vdev"
    for _ in $(seq 50); do zpool create -m none "$POOL" "$STATE/vdev" 2>/dev/null && break; sleep 0.2; done
    zfs create "$POOL/data"
fi

say "agent on https://127.0.0.1:$PORT"
if [[ -f $STATE/agent.pid ]] && kill -0 "$(cat "$STATE/agent.pid")" 2>/dev/null; then
    kill "$(cat "$STATE/agent.pid")"
    sleep 1
fi
# Detached (a new session without a controlling terminal, stdin from /dev/null),
# so the agent can never type into the terminal this script runs in.
setsid -f "$HA" serve --config "$STATE/agent.toml" --pid-file "$STATE/agent.pid" \
    < /dev/null >> "$STATE/agent.log" 2>&1

CURL=(curl --silent --show-error --cacert "$STATE/pki/ca.crt"
      --cert "$STATE/pki/librarian-demo.crt" --key "$STATE/pki/librarian-demo.key")
for _ in $(seq 50); do
    [[ -s $STATE/agent.pid ]] && "${CURL[@]}" "https://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
    sleep 0.2
done

say "curl --cert ... /health"
"${CURL[@]}" "https://127.0.0.1:$PORT/health"; echo
SNAPSHOT=demo-$(date +%Y%m%d-%H%M%S)
say "curl --cert ... /host/op  zfs snapshot $POOL/data@$SNAPSHOT"
"${CURL[@]}" -X POST "https://127.0.0.1:$PORT/host/op" -H 'Content-Type: application/json' \
    -d "{\"kind\":\"zfs\",\"resource\":\"$POOL/data\",\"args\":[\"snapshot\",\"$SNAPSHOT\"]}"; echo
say "curl --cert ... /host/op  zfs list $POOL snapshot"
"${CURL[@]}" -X POST "https://127.0.0.1:$PORT/host/op" -H 'Content-Type: application/json' \
    -d "{\"kind\":\"zfs\",\"resource\":\"$POOL\",\"args\":[\"list\",\"snapshot\"]}"; echo
OP=("$HA" op --server "https://127.0.0.1:$PORT" --ca "$STATE/pki/ca.crt"
    --cert "$STATE/pki/librarian-demo.crt" --key "$STATE/pki/librarian-demo.key")
say "host-agent op ... zfs list $POOL/data snapshot   (the command-line client)"
"${OP[@]}" zfs list "$POOL/data" snapshot
say "the same snapshot, seen by zfs itself"
zfs list -H -t snapshot -o name -r "$POOL"
say "audit log"
"$HA" audit verify "$STATE/audit.jsonl"
cat <<EOF

The agent keeps running (pid $(cat "$STATE/agent.pid"), log $STATE/agent.log).
Try:  ${CURL[*]} https://127.0.0.1:$PORT/health
      ${OP[*]} zfs get $POOL/data
Stop: $REPO/scripts/demo.sh stop
EOF
