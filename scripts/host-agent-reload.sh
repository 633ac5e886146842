#!/bin/bash
# Ask the running host-agent to reload (SIGHUP): it reopens its audit log and
# re-reads its config, certificates and CRL. Called as root after log rotation
# and after the CRL is re-signed. install.sh renders it to
# /usr/local/sbin/host-agent-reload with the @...@ values filled in.
# Does nothing when no agent runs.
#
# Root never reads the pid file: @RUN_DIR@ is the service account's, so the file
# may be a link to any secret or a FIFO. Reading it and signalling happen as the
# service account, which can read only what it already can and signal only its
# own processes; in a new session with no terminal, so that process cannot push
# keystrokes into a root shell that runs this script (TIOCSTI), and with its
# output passed on through a pipe rather than root's terminal. A pid file the
# account turns into a FIFO costs at most the time limit.
set -o pipefail
if [ -d /run/systemd/system ] && systemctl --quiet is-active host-agent.service; then
    exec systemctl reload host-agent.service
fi
# shellcheck disable=SC2016  # expanded by the service account's shell
timeout -k 1 10 setsid -w runuser -u @SERVICE_USER@ -- /bin/sh -c '
    [ -e "$1" ] || [ -L "$1" ] || exit 0
    if [ -L "$1" ] || [ ! -f "$1" ]; then
        echo "host-agent-reload: $1 is not a regular file; no signal sent" >&2
        exit 1
    fi
    pid=$(head -c 32 -- "$1") || exit 1
    case $pid in
        "" | *[!0-9]*) echo "host-agent-reload: $1 does not hold a pid" >&2; exit 1 ;;
    esac
    exec kill -HUP "$pid"
' host-agent-reload @RUN_DIR@/host-agent.pid </dev/null 2>&1 | cat >&2
