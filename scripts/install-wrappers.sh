#!/bin/bash
# Install the sudo wrappers root-owned into DIR, point them at their root-owned
# config file, and install a sudoers drop-in (validated with `visudo -cf` first)
# that lets USER run exactly those wrappers. Used by demo.sh and the root tests.
#
#   install-wrappers.sh DIR CONFIG_FILE USER SUDOERS_FILE
set -euo pipefail

(( $# == 4 )) || { echo "usage: $0 DIR CONFIG_FILE USER SUDOERS_FILE" >&2; exit 64; }
dir=$1 config=$2 user=$3 sudoers=$4
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

[[ $dir == /* && $config == /* && $sudoers == /* ]] \
    || { echo "$0: DIR, CONFIG_FILE and SUDOERS_FILE must be absolute paths" >&2; exit 64; }
id "$user" >/dev/null 2>&1 || { echo "$0: no such user: $user" >&2; exit 64; }

install -d -m 0755 -o root -g root "$dir"
sed "s|^readonly HA_WRAPPER_CONFIG=.*|readonly HA_WRAPPER_CONFIG=$config|" \
    "$repo/wrappers/host-agent-lib.sh" > "$dir/host-agent-lib.sh"
chown root:root "$dir/host-agent-lib.sh"
chmod 0644 "$dir/host-agent-lib.sh"
for wrapper in "$repo"/wrappers/host-agent-*; do
    [[ $wrapper == */host-agent-lib.sh ]] && continue
    install -m 0755 -o root -g root "$wrapper" "$dir/"
done

candidate=$(mktemp)
trap 'rm -f "$candidate"' EXIT
sed -e "s|@SERVICE_USER@|$user|g" -e "s|@WRAPPER_DIR@|$dir|g" "$repo/sudoers/host-agent" \
    > "$candidate"
visudo -cqf "$candidate" || { echo "$0: rendered sudoers does not validate" >&2; exit 78; }
install -m 0440 -o root -g root "$candidate" "$sudoers"
