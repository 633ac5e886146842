#!/bin/bash
# Bring up a working host-agent on 127.0.0.1 on a fresh Debian machine, as root, and
# show why it exists: certificates, an unprivileged service account allowed (by
# sudoers) to run only the wrappers, a small file-backed ZFS pool served by zfs-fuse,
# a Signal bridge stand-in (it speaks signal-cli-rest-api); then a snapshot, and a
# destroy that waits for a person: the approver's message, their APPROVE, the destroy
# running when resubmitted, and the audit log of every step. Everything lives in
# .demo/ except the account, the sudoers drop-in and the pool; `scripts/demo.sh stop`
# removes them.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=$REPO/.demo
# The demo's own names and ports (the tests run it with others, beside anything else).
USER_NAME=${HOST_AGENT_DEMO_USER:-host-agent-demo}
POOL=${HOST_AGENT_DEMO_POOL:-hademo}
PORT=${HOST_AGENT_DEMO_PORT:-18443}
SIGNAL_PORT=${HOST_AGENT_DEMO_SIGNAL_PORT:-18080}
SUDOERS=/etc/sudoers.d/$USER_NAME
# The bridge's number and the approver's (numbers reserved for examples).
BRIDGE=+15555550000
APPROVER=+15555550001
PACKAGES=(python3-venv sudo zfs-fuse curl procps bash-builtins)

say() { printf '\n== %s\n' "$*"; }

# A pid alone is not an identity: pids are reused, and a pid file left by a killed run
# may name a process started since (once, a shared zfs-fuse daemon). Each pid file the
# demo stops has beside it FILE.start, the start time of the process it named when the
# demo started that process: with the pid, one process for good. The pid files
# themselves stay as their programs write them (the agent's is read by others too).

# Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot; fails
# if no such process runs (or only its zombie does). The command name, field 2, may hold
# spaces and ')', so the fields are counted after the last ')'.
start_time() {
    local stat fields
    [[ $1 =~ ^[1-9][0-9]*$ ]] || return 1
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    read -r -a fields <<< "${stat##*)}"
    [[ ${fields[0]:-Z} != [ZX] && ${fields[19]:-} =~ ^[0-9]+$ ]] || return 1
    echo "${fields[19]}"
}

# Waits (at most 10 s) for a program started detached to write its pid file.
wait_for_pid_file() {
    for _ in $(seq 100); do
        [[ $(cat "$1" 2>/dev/null) =~ ^[1-9][0-9]*$ ]] && return 0
        sleep 0.1
    done
    echo "demo.sh: no pid in $1" >&2
    return 1
}

# Records, beside the pid file, the start time of the process it names (just started).
record_start() {
    local pid start
    pid=$(< "$1")
    start=$(start_time "$pid") || { echo "demo.sh: pid $pid, in $1, exited at once" >&2; return 1; }
    echo "$start" > "$1.start"
}

# Stops the process the pid file names if it is still the one the demo started (same
# pid, same start time); otherwise the file is stale: it is removed, nothing is killed.
stop_pid_file() {
    local pid recorded current why=
    [[ -f $1 ]] || { rm -f "$1.start"; return 0; }
    pid=$(cat "$1" 2>/dev/null) || pid=
    recorded=$(cat "$1.start" 2>/dev/null) || recorded=
    if ! current=$(start_time "$pid"); then
        why="no process has pid $pid now"
    elif [[ -z $recorded ]]; then
        why="no start time beside pid $pid, now $(command_name "$pid"): it may be another process"
    elif [[ $current != "$recorded" ]]; then
        why="pid $pid is another process now, $(command_name "$pid"), started at tick $current"
        why+=" (not $recorded)"
    else
        kill "$pid" 2>/dev/null || true
        wait_for_exit "$pid" "$current"
    fi
    [[ -z $why ]] || echo "demo.sh: $1 is stale: $why; not killed, file removed" >&2
    rm -f "$1" "$1.start"
}

# The process's command name, for messages (control characters shown as '?').
command_name() {
    local name
    name=$(cat "/proc/$1/comm" 2>/dev/null) || name=gone
    echo "${name//[^[:print:]]/?}"
}

# Waits (at most 10 s) until pid $1, started at $2, has exited: a restart must not race
# the process it replaces (its port, its pid file).
wait_for_exit() {
    for _ in $(seq 100); do
        [[ $(start_time "$1") == "$2" ]] || return 0
        sleep 0.1
    done
    echo "demo.sh: pid $1 still runs 10 s after SIGTERM" >&2
}

stop() {
    stop_pid_file "$STATE/agent.pid"
    stop_pid_file "$STATE/signal.pid"
    zpool destroy -f "$POOL" 2>/dev/null || true
    stop_pid_file "$STATE/zfs-fuse.pid"
    rm -f "$SUDOERS"
    userdel "$USER_NAME" 2>/dev/null || true
    echo "demo stopped (audit log kept in $STATE/audit.jsonl)"
}

installed() {
    local package
    for package in "$@"; do
        [[ $(dpkg-query -W -f='${Status}' "$package" 2>/dev/null) == "install ok installed" ]] \
            || return 1
    done
}

if [[ ${1:-} == stop ]]; then
    stop
    exit 0
fi
[[ $(id -u) == 0 ]] || { echo "run as root: it creates a user, a sudoers drop-in and a pool" >&2; exit 1; }

say "Debian packages"
if installed "${PACKAGES[@]}"; then
    echo "already installed: ${PACKAGES[*]}"
else
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${PACKAGES[@]}" >/dev/null
fi

say "virtualenv with host-agent"
[[ -x $STATE/venv/bin/python ]] || { mkdir -p "$STATE" && /usr/bin/python3 -m venv "$STATE/venv"; }
"$STATE/venv/bin/pip" install -q "$REPO"
HA=$STATE/venv/bin/host-agent

say "certificates"
if [[ ! -f $STATE/pki/ca.crt ]]; then
    "$HA" certs init "$STATE/pki"
    "$HA" certs client "$STATE/pki" librarian-demo
fi

say "service account"
id "$USER_NAME" >/dev/null 2>&1 \
    || useradd --system --no-create-home --shell /usr/sbin/nologin "$USER_NAME"
id "$USER_NAME"

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
# The Signal bridge (here its stand-in): tokens go to the approvers' phones, and the
# agent reads their replies every second.
signal_url = "http://127.0.0.1:$SIGNAL_PORT"
signal_number = "$BRIDGE"
allowed_approvers = ["$APPROVER"]
poll_interval_seconds = 1

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

# The zfs wrapper's own switch (root-owned wrappers.conf): destroys run only for the
# service account, and only because this says so.
[wrappers.zfs_destroy]
enabled = true
allowed_uids = [$(id -u "$USER_NAME")]
EOF
"$HA" check-config "$STATE/agent.toml"

say "wrappers and the sudoers drop-in"
"$HA" wrappers-config --config "$STATE/agent.toml" --output "$STATE/wrappers.conf"
"$REPO/scripts/install-wrappers.sh" "$STATE/libexec" "$STATE/wrappers.conf" "$USER_NAME" "$SUDOERS"

say "zfs-fuse pool $POOL on a file"
if ! pgrep -x zfs-fuse >/dev/null; then
    zfs-fuse --no-daemon >/dev/null 2>&1 &
    echo $! > "$STATE/zfs-fuse.pid"
    record_start "$STATE/zfs-fuse.pid"
fi
if ! zpool list "$POOL" >/dev/null 2>&1; then
    truncate -s 128M "$STATE/vdev-$POOL"
    for _ in $(seq 50); do zpool create -m none "$POOL" "$STATE/vdev-$POOL" 2>/dev/null && break; sleep 0.2; done
    zfs create "$POOL/data"
fi

say "Signal bridge stand-in on http://127.0.0.1:$SIGNAL_PORT"
stop_pid_file "$STATE/signal.pid"
: > "$STATE/signal-outbox.jsonl"
# The tests' stand-in (standard library only), run from the repository, detached.
(cd "$REPO" && setsid -f /usr/bin/python3 -m tests.signal_bridge --port "$SIGNAL_PORT" \
    --outbox "$STATE/signal-outbox.jsonl" --pid-file "$STATE/signal.pid" \
    < /dev/null >> "$STATE/signal.log" 2>&1)
wait_for_pid_file "$STATE/signal.pid"
record_start "$STATE/signal.pid"

say "agent on https://127.0.0.1:$PORT"
stop_pid_file "$STATE/agent.pid"
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
wait_for_pid_file "$STATE/agent.pid"
record_start "$STATE/agent.pid"
OP=("$HA" op --server "https://127.0.0.1:$PORT" --ca "$STATE/pki/ca.crt"
    --cert "$STATE/pki/librarian-demo.crt" --key "$STATE/pki/librarian-demo.key")
PY=$STATE/venv/bin/python

# What the approvers' phones got (the stand-in's outbox), from message $1 on.
messages() {
    "$PY" - "$STATE/signal-outbox.jsonl" "$1" <<'PYTHON'
import json, sys
for line in open(sys.argv[1]).readlines()[int(sys.argv[2]):]:
    for text in json.loads(line)["message"].splitlines():
        print("  |", text)
    print()
PYTHON
}

wait_for_messages() {
    for _ in $(seq 100); do
        (( $(wc -l < "$STATE/signal-outbox.jsonl") >= $1 )) && return 0
        sleep 0.1
    done
    echo "no message reached the approvers" >&2
    return 1
}

# Step 8 shows this run's records only (the log is kept across runs).
AUDIT_START=$( [[ -f $STATE/audit.jsonl ]] && wc -l < "$STATE/audit.jsonl" || echo 0)

say "1. curl --cert ... /health: the agent knows this client by its certificate"
"${CURL[@]}" "https://127.0.0.1:$PORT/health"; echo

SNAPSHOT=demo-$(date +%Y%m%d-%H%M%S)
say "2. a snapshot: this client may, so it runs at once"
echo "\$ host-agent op zfs snapshot $POOL/data $SNAPSHOT"
"${OP[@]}" zfs snapshot "$POOL/data" "$SNAPSHOT"
echo "\$ host-agent op zfs list $POOL snapshot"
"${OP[@]}" zfs list "$POOL" snapshot

say "3. a destroy: it needs a person, so the agent holds it (202) and asks"
echo "\$ host-agent op zfs destroy $POOL/data@$SNAPSHOT --reason \"free space\""
status=0
"${OP[@]}" zfs destroy "$POOL/data@$SNAPSHOT" --reason "free space" 2> "$STATE/pending.txt" \
    || status=$?
cat "$STATE/pending.txt"
(( status == 7 )) || { echo "expected exit 7 (waits for a human), got $status" >&2; exit 1; }
APPROVAL=$(grep -o 'ap-[0-9a-f]\{16\}' "$STATE/pending.txt" | head -1)

say "4. the approver's phone shows (Signal, through the bridge)"
wait_for_messages 1
messages 0
TOKEN=$(grep -o 'APPROVE [0-9A-Z]\{16\}' "$STATE/signal-outbox.jsonl" | head -1 | cut -d' ' -f2)

say "5. the approver replies on their phone: APPROVE $TOKEN"
curl --silent --show-error -X POST "http://127.0.0.1:$SIGNAL_PORT/stand-in/reply" \
    -d "{\"sender\": \"$APPROVER\", \"text\": \"APPROVE $TOKEN\"}" >/dev/null

say "6. the client resubmits the approved destroy (it waits for the agent to read the reply)"
echo "\$ host-agent op --follow $APPROVAL --wait"
"${OP[@]}" --follow "$APPROVAL" --wait --max-wait 30 --poll-interval 0.5
echo "\$ zfs list -t snapshot -r $POOL   (zfs itself)"
zfs list -t snapshot -r "$POOL"

say "7. the approvers hear how it ended"
wait_for_messages 3
messages 1

say "8. the audit log: every step, hash-chained and fsync'd"
"$PY" - "$STATE/audit.jsonl" "$AUDIT_START" <<'PYTHON'
import json, sys
for line in open(sys.argv[1]).readlines()[int(sys.argv[2]):]:
    record = json.loads(line)
    how = record.get("decision") or record.get("outcome") or record.get("status") or ""
    print(f"  {record['ts'][11:19]}  {record['event']:<18} {record.get('cn', ''):<15}"
          f" {record.get('operation') or '':<13} {how}")
PYTHON
echo "\$ host-agent audit verify audit.jsonl"
"$HA" audit verify "$STATE/audit.jsonl"
cat <<EOF

The agent keeps running (pid $(cat "$STATE/agent.pid"), log $STATE/agent.log).
Try:  ${CURL[*]} https://127.0.0.1:$PORT/health
      ${OP[*]} zfs get $POOL/data
Stop: $REPO/scripts/demo.sh stop
EOF
