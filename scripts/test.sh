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
        util-linux >/dev/null
fi

[[ -x $VENV/bin/python ]] || /usr/bin/python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -e ".[test,ansible]"

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
