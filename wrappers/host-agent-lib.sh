# shellcheck shell=bash
# Shared by every host-agent wrapper; sourced, never executed. The wrappers run
# as root through sudo, so they trust nothing from the agent: each argument is
# re-validated here and allowlists come only from the root-owned config file.

# Rewritten by the installer when the config lives elsewhere.
readonly HA_WRAPPER_CONFIG=/etc/host-agent/wrappers.conf

# sysexits.h: the agent maps these to stable error codes.
# shellcheck disable=SC2034  # used by the wrappers that source this file
readonly EX_USAGE=64 EX_NOINPUT=66 EX_NOUSER=67 EX_NOPERM=77 EX_CONFIG=78
readonly HA_MAX_NAME=255
# A Unix account name as useradd accepts it by default.
# shellcheck disable=SC2034  # used by the wrappers that source this file
readonly HA_USER_NAME='[a-z_][a-z0-9_-]{0,31}'

HA_NAME=${0##*/}
export LC_ALL=C
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
umask 077

ha_log() {
    # syslog may be absent (containers); logging must never change the outcome.
    logger -t "$HA_NAME" -p "authpriv.$1" -- "$2" 2>/dev/null || true
}

ha_refuse() {
    local status=$1
    shift
    ha_log warning "refused: $*"
    printf '%s: refused: %s\n' "$HA_NAME" "$*" >&2
    exit "$status"
}

# The config file's lines, read once when the wrapper starts (ha_load_config).
HA_CONFIG_LINES=()

# ha_load_config: refuse a config file the service account could have changed.
ha_load_config() {
    local owner mode
    [[ -e $HA_WRAPPER_CONFIG ]] || return 0
    read -r owner mode < <(stat -c '%u %a' -- "$HA_WRAPPER_CONFIG")
    [[ $owner == 0 ]] || ha_refuse "$EX_CONFIG" "$HA_WRAPPER_CONFIG is not owned by root"
    (( (8#$mode & 8#022) == 0 )) \
        || ha_refuse "$EX_CONFIG" "$HA_WRAPPER_CONFIG is group- or world-writable"
    mapfile -t HA_CONFIG_LINES < "$HA_WRAPPER_CONFIG"
}

# ha_config_values KEY: every value of KEY, one per line, in file order.
ha_config_values() {
    local line
    for line in "${HA_CONFIG_LINES[@]}"; do
        if [[ $line == "$1="* ]]; then
            printf '%s\n' "${line#"$1="}"
        fi
    done
}

# ha_config_value KEY DEFAULT: the last value of KEY, or DEFAULT.
ha_config_value() {
    local line value=""
    for line in "${HA_CONFIG_LINES[@]}"; do
        [[ $line == "$1="* ]] && value=${line#"$1="}
    done
    printf '%s\n' "${value:-$2}"
}

# ha_listed VALUE KEY: whether VALUE is exactly one of KEY's values.
ha_listed() {
    local line
    for line in "${HA_CONFIG_LINES[@]}"; do
        [[ $line == "$2=$1" ]] && return 0
    done
    return 1
}

# ha_trusted_file WHAT PATH: set HA_TRUSTED to PATH's real path, a regular file
# that only root can change, in directories only root can change (a root-owned
# sticky directory such as /tmp cannot have root's entries swapped either).
HA_TRUSTED=
ha_trusted_file() {
    local what=$1 path=$2 real node owner mode
    real=$(realpath -e -- "$path" 2>/dev/null) || ha_refuse "$EX_NOINPUT" "no $what $path"
    [[ -f $real ]] || ha_refuse "$EX_CONFIG" "$what $path is not a regular file"
    node=$real
    while :; do
        read -r owner mode < <(stat -c '%u %a' -- "$node")
        if [[ $owner != 0 ]] || { (( (8#$mode & 8#022) != 0 )) \
            && ! [[ -d $node && -k $node ]]; }; then
            ha_refuse "$EX_CONFIG" \
                "$what $path: $node must be owned by root and not group/world-writable"
        fi
        [[ $node == / ]] && break
        node=${node%/*}
        node=${node:-/}
    done
    HA_TRUSTED=$real
}

# ha_binary KEY DEFAULT: the tool's absolute path, a trusted executable (see above).
ha_binary() {
    local path
    path=$(ha_config_value "$1" "$2")
    [[ $path == /* && -e $path ]] || ha_refuse "$EX_CONFIG" "$1=$path does not exist"
    ha_trusted_file "$1" "$path"
    [[ -x $HA_TRUSTED ]] || ha_refuse "$EX_CONFIG" "$1=$path is not executable"
    printf '%s\n' "$path"
}

# ha_python: python_bin's path, for the wrappers that run Python as root. A
# virtualenv's files are code run as root here, so every one of them must be
# root's and not group/world-writable.
ha_python() {
    local python venv bad
    python=$(ha_binary python_bin /usr/bin/python3)
    venv=$(dirname -- "$(dirname -- "$python")")
    if [[ -f $venv/pyvenv.cfg ]]; then
        ha_trusted_file "python environment" "$venv/pyvenv.cfg"
        bad=$(find "$venv" ! -type l \( ! -user root -o -perm /022 \) -print -quit)
        [[ -z $bad ]] || ha_refuse "$EX_CONFIG" "python environment: $bad is not root's alone"
    fi
    printf '%s\n' "$python"
}

# ha_check FIELD VALUE REGEX: bounded, no leading '-', full match of REGEX.
ha_check() {
    local field=$1 value=$2 regex=$3
    [[ -n $value ]] || ha_refuse "$EX_USAGE" "$field is empty"
    (( ${#value} <= HA_MAX_NAME )) || ha_refuse "$EX_USAGE" "$field is too long"
    [[ $value != -* ]] || ha_refuse "$EX_USAGE" "$field starts with '-'"
    [[ $value =~ ^${regex}$ ]] || ha_refuse "$EX_USAGE" "$field is not valid: ${value@Q}"
}

# ha_run CMD...: log and replace this shell with the command (argv only).
ha_run() {
    ha_log info "running: ${*@Q}"
    exec "$@"
}

ha_load_config
