#!/bin/sh
# Ask the running host-agent to reload (SIGHUP): it reopens its audit log and
# re-reads its config, certificates and CRL. Called after log rotation and
# after the CRL is re-signed. install.sh renders it to
# /usr/local/sbin/host-agent-reload with the @...@ values filled in.
# Does nothing when no agent runs.
if [ -d /run/systemd/system ] && systemctl --quiet is-active host-agent.service; then
    exec systemctl reload host-agent.service
elif [ -s @RUN_DIR@/host-agent.pid ]; then
    # Sent as the service account, so a stale pid file can never make the
    # signal reach anyone else's process.
    exec runuser -u @SERVICE_USER@ -- kill -HUP "$(cat @RUN_DIR@/host-agent.pid)"
fi
