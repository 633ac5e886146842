#!/bin/bash
# Install the sudo wrappers root-owned into DIR, point them at their root-owned
# config file, and install a sudoers drop-in (validated with `visudo -cf` first)
# that lets USER run exactly those wrappers. Used by demo.sh and the root tests;
# install.sh does the same through the shared scripts/install-lib.sh.
#
#   install-wrappers.sh DIR CONFIG_FILE USER SUDOERS_FILE
set -euo pipefail

(( $# == 4 )) || { echo "usage: $0 DIR CONFIG_FILE USER SUDOERS_FILE" >&2; exit 64; }
dir=$1 config=$2 user=$3 sudoers=$4

[[ $dir == /* && $config == /* && $sudoers == /* ]] \
    || { echo "$0: DIR, CONFIG_FILE and SUDOERS_FILE must be absolute paths" >&2; exit 64; }
for value in "$dir" "$config" "$sudoers" "$user"; do
    [[ $value =~ ^[A-Za-z0-9._/:-]+$ ]] \
        || { echo "$0: $value: only letters, digits and ._/:- are accepted" >&2; exit 64; }
done
id "$user" >/dev/null 2>&1 || { echo "$0: no such user: $user" >&2; exit 64; }

# shellcheck source=scripts/install-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/install-lib.sh"
ha_install_wrappers "$dir" "$config" "$user" "$sudoers"
