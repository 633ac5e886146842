#!/bin/sh
# Ask the running host-agent to reload (SIGHUP): it reopens its audit log and
# re-reads its config, certificates and CRL. Called as root after log rotation
# and after the CRL is re-signed. install.sh renders it to
# /usr/local/sbin/host-agent-reload with the @...@ values filled in.
# Does nothing when no agent runs.
#
#   host-agent-reload [HUP|TERM]   (HUP by default; install.sh --uninstall
#                                   sends TERM and waits until the agent is gone)
#
# The pid file lies in the service account's own directory, so the account
# decides what it is (a symlink to a root-only file, a FIFO, a stranger's pid).
# Root therefore never opens it: the whole read-and-signal runs as the service
# account, which can only read what it can already read and signal its own
# processes. Even so, the file is opened without following a symlink or
# blocking, at most 32 bytes are read, and only a pid of digits that belongs to
# the service account is signalled; nothing read reaches any argv. It runs in a
# session of its own (setsid): run from root's shell, the account's process has
# no controlling terminal through which to push keystrokes into it (TIOCSTI).
set -u
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
signal=${1:-HUP}
case $signal in
    HUP | TERM) ;;
    *) echo "host-agent-reload: usage: host-agent-reload [HUP|TERM]" >&2; exit 64 ;;
esac
if [ "$signal" = HUP ] && [ -d /run/systemd/system ] \
    && systemctl --quiet is-active host-agent.service; then
    # systemd signals its own record of the main pid, never the pid file.
    exec systemctl reload host-agent.service
fi
# shellcheck disable=SC2016 # expanded by the service account's shell
exec setsid -w runuser -u @SERVICE_USER@ -- /bin/sh -c '
    pid_file=$1 signal=$2
    [ -e "$pid_file" ] || [ -L "$pid_file" ] || exit 0
    if [ -L "$pid_file" ] || [ ! -f "$pid_file" ]; then
        echo "host-agent-reload: $pid_file is not a regular file; nothing signalled" >&2
        exit 65
    fi
    pid=$(dd if="$pid_file" iflag=nofollow,nonblock bs=32 count=1 status=none) || exit 65
    case $pid in
        "" | *[!0-9]*)
            echo "host-agent-reload: $pid_file holds no pid; nothing signalled" >&2
            exit 65 ;;
    esac
    # A stale pid file (the agent is gone): nothing to do.
    [ -d "/proc/$pid" ] || exit 0
    if [ ! -O "/proc/$pid" ]; then
        echo "host-agent-reload: pid $pid is not a process of $(id -un); nothing signalled" >&2
        exit 65
    fi
    kill -s "$signal" "$pid" || exit 1
    [ "$signal" = TERM ] || exit 0
    # Stopping: wait (30 s at most) until the agent is gone.
    tries=300
    while kill -0 "$pid" 2>/dev/null; do
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || { echo "host-agent-reload: pid $pid did not stop" >&2; exit 75; }
        sleep 0.1
    done
' host-agent-reload @RUN_DIR@/host-agent.pid "$signal"
