#!/bin/bash
# Install test dependencies and run every check: shellcheck, ruff, mypy, pytest.
# On a fresh Debian machine run it as root: it installs the Debian packages the
# real-component tests use (sudo, zfs-fuse, curl, ...) and runs those tests too.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
VENV=${HOST_AGENT_VENV:-$REPO/.venv}

if [[ $(id -u) == 0 ]]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3-venv sudo zfs-fuse shellcheck curl openssl procps logrotate systemd nodejs \
        util-linux postgresql rsyslog rsyslog-gnutls bash-builtins prometheus >/dev/null
fi

[[ -x $VENV/bin/python ]] || /usr/bin/python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -e ".[test,ansible]"
# sslyze scans the agent's TLS posture (tests/resilience); it pins cryptography below what
# the agent needs, so it lives in a virtualenv of its own.
SSLYZE_VENV=${HOST_AGENT_SSLYZE_VENV:-$REPO/.venv-sslyze}
[[ -x $SSLYZE_VENV/bin/sslyze ]] || {
    /usr/bin/python3 -m venv "$SSLYZE_VENV" && "$SSLYZE_VENV/bin/pip" install -q "sslyze>=6.3,<7"
}
export HOST_AGENT_SSLYZE=$SSLYZE_VENV/bin/sslyze

echo "== shellcheck"
shellcheck -x install.sh wrappers/* scripts/*.sh bench/run.sh \
    tests/wrappers/* .ci/run
echo "== ruff"
"$VENV/bin/ruff" check host_agent tests bench
"$VENV/bin/ruff" format --check host_agent tests bench
echo "== mypy"
"$VENV/bin/mypy"
echo "== pytest"
exec "$VENV/bin/pytest" "$@"
