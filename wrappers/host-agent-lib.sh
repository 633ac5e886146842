# shellcheck shell=bash
# Shared by every host-agent wrapper; sourced, never executed. The wrappers run
# as root through sudo, so they trust nothing from the agent: each argument is
# re-validated here and allowlists come only from the root-owned config file.

# Rewritten by the installer when the config lives elsewhere.
readonly HA_WRAPPER_CONFIG=/etc/host-agent/wrappers.conf

# sysexits.h: the agent maps these to stable error codes.
readonly EX_USAGE=64 EX_CONFIG=78
readonly HA_MAX_NAME=255

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

# ha_config_value KEY DEFAULT: a value from the root-owned config file.
ha_config_value() {
    local key=$1 default=$2 owner mode line value=""
    if [[ -e $HA_WRAPPER_CONFIG ]]; then
        read -r owner mode < <(stat -c '%u %a' -- "$HA_WRAPPER_CONFIG")
        [[ $owner == 0 ]] || ha_refuse "$EX_CONFIG" "$HA_WRAPPER_CONFIG is not owned by root"
        (( (8#$mode & 8#022) == 0 )) \
            || ha_refuse "$EX_CONFIG" "$HA_WRAPPER_CONFIG is group- or world-writable"
        while IFS= read -r line || [[ -n $line ]]; do
            [[ $line == "$key="* ]] && value=${line#"$key="}
        done < "$HA_WRAPPER_CONFIG"
    fi
    printf '%s\n' "${value:-$default}"
}

# ha_binary KEY DEFAULT: an absolute path to a root-owned executable.
ha_binary() {
    local path
    path=$(ha_config_value "$1" "$2")
    [[ $path == /* && -x $path ]] || ha_refuse "$EX_CONFIG" "$1=$path is not an executable path"
    printf '%s\n' "$path"
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
