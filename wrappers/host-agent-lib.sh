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
    # syslog may be absent (containers); logging must never change the outcome. Sent
    # in the background, so the tool need not wait for it, and with none of the tool's
    # streams, so nobody reading the tool's output waits for logger either.
    logger -t "$HA_NAME" -p "authpriv.$1" -- "$2" </dev/null >/dev/null 2>&1 &
}

ha_refuse() {
    local status=$1
    shift
    ha_log warning "refused: $*"
    printf '%s: refused: %s\n' "$HA_NAME" "$*" >&2
    exit "$status"
}

# Coreutils timeout's SIGKILL follows its SIGTERM after this many seconds.
readonly HA_KILL_GRACE=2
readonly HA_MAX_SYMLINKS=40

# bash's own stat (Debian's bash-builtins), loaded from root's /usr/lib like bash's other
# libraries: each node's owner, mode and link target without a process per node (a
# fork per node costs more than the tool the checks guard).
readonly HA_STAT_BUILTIN=/usr/lib/bash/stat
enable -f "$HA_STAT_BUILTIN" stat 2>/dev/null \
    || ha_refuse "$EX_CONFIG" "cannot load $HA_STAT_BUILTIN: install Debian's bash-builtins"

# Every node ha_trusted_path has found root's alone in this run: its type (d, l, - ...),
# then a symlink's target ("l/usr/bin"). Only root can change such a node, or any step
# on the way to it, so it stays as checked while the wrapper runs and is not looked at
# again (the wrapper's own paths share most of their steps).
declare -A HA_ROOT_NODES=()
declare -A HA_STAT=()

# ha_root_node WHAT PATH NODE: HA_NODE = NODE's entry in HA_ROOT_NODES. A node not in it
# yet is looked at first (its own status: a symlink is not followed), and refused when
# missing or when anyone but root could change it: it must be owned by root and, unless
# a symlink (whose own mode means nothing), not group/world-writable; a root-owned
# sticky directory (/tmp) passes, as no one else can swap root's entries.
HA_NODE=
ha_root_node() {
    HA_NODE=${HA_ROOT_NODES[$3]-}
    [[ -z $HA_NODE ]] || return 0
    HA_STAT=()
    # Tested first so that stat has nothing to say: cheaper than a redirection per node.
    if [[ -e $3 || -L $3 ]]; then stat -L -A HA_STAT -- "$3" || HA_STAT=(); fi
    HA_NODE=${HA_STAT[type]-}
    [[ -n $HA_NODE ]] || ha_refuse "$EX_NOINPUT" "no $1 $2 ($3 is missing)"
    if [[ ${HA_STAT[uid]} != 0 ]] || { [[ $HA_NODE != l ]] && (( (8#${HA_STAT[perms]} & 8#022) != 0 )) \
        && ! [[ $HA_NODE == d && -k $3 ]]; }; then
        ha_refuse "$EX_CONFIG" "$1 $2: $3 must be owned by root and not group/world-writable"
    fi
    [[ $HA_NODE != l ]] || HA_NODE+=${HA_STAT[link]}
    HA_ROOT_NODES[$3]=$HA_NODE
}

# ha_trusted_path WHAT PATH: set HA_TRUSTED to PATH with every symlink resolved, after
# checking that only root can change any step of that resolution: each directory a
# name is looked up in, each symlink followed and the final node. Running or reading
# HA_TRUSTED (never PATH again) then reaches exactly what was checked: no one else
# can flip a link or swap an entry between the check and the use. The names still to
# resolve are kept as one string (a symlink's target is put in front of them).
HA_TRUSTED=
ha_trusted_path() {
    local what=$1 path=$2 directory=/ rest=$2 node name hops=0
    [[ $path == /* ]] || ha_refuse "$EX_CONFIG" "$what $path is not an absolute path"
    ha_root_node "$what" "$path" /
    while [[ -n $rest ]]; do
        name=${rest%%/*}
        if [[ $rest == */* ]]; then rest=${rest#*/}; else rest=""; fi
        case $name in
            '' | .) continue ;;
            ..)
                directory=${directory%/*}
                directory=${directory:-/}
                continue
                ;;
        esac
        node=${directory%/}/$name
        ha_root_node "$what" "$path" "$node"
        if [[ $HA_NODE == l* ]]; then
            (( ++hops <= HA_MAX_SYMLINKS )) || ha_refuse "$EX_CONFIG" "$what $path: too many symlinks"
            [[ $HA_NODE == l/* ]] && directory=/
            rest=${HA_NODE#l}${rest:+/$rest}
        else
            [[ $HA_NODE == d || -z $rest ]] \
                || ha_refuse "$EX_NOINPUT" "no $what $path ($node is not a directory)"
            directory=$node
        fi
    done
    HA_TRUSTED=$directory
}

# ha_trusted_file WHAT PATH: ha_trusted_path, for a regular file.
ha_trusted_file() {
    ha_trusted_path "$1" "$2"
    [[ -f $HA_TRUSTED ]] || ha_refuse "$EX_CONFIG" "$1 $2 is not a regular file"
}

# ha_trusted_tree WHAT DIRECTORY: every file below DIRECTORY (already a trusted real
# path) is root's alone, and every symlink below it leads to a trusted path.
ha_trusted_tree() {
    local what=$1 directory=$2 entry bad
    bad=$(find "$directory" ! -type l \( ! -user root -o -perm /022 \) -print -quit)
    [[ -z $bad ]] || ha_refuse "$EX_CONFIG" "$what: $bad is not root's alone"
    while IFS= read -r -d '' entry; do
        ha_trusted_path "$what" "$entry"
    done < <(find "$directory" -type l -print0)
}

# The config file's lines, read once when the wrapper starts (ha_load_config).
HA_CONFIG_LINES=()

# ha_load_config: refuse a config file, or a directory it is in, that anyone but root
# could change (a missing file means defaults, so its directory counts too).
ha_load_config() {
    local directory=${HA_WRAPPER_CONFIG%/*}
    ha_trusted_path "wrapper config directory" "${directory:-/}"
    [[ -e $HA_TRUSTED/${HA_WRAPPER_CONFIG##*/} ]] || return 0
    ha_trusted_file "wrapper config" "$HA_WRAPPER_CONFIG"
    mapfile -t HA_CONFIG_LINES < "$HA_TRUSTED"
}

# ha_config_list ARRAY KEY: ARRAY = every value of KEY, in file order.
ha_config_list() {
    local -n into=$1
    local line
    into=()
    for line in "${HA_CONFIG_LINES[@]}"; do
        [[ $line == "$2="* ]] && into+=("${line#"$2="}")
    done
    return 0
}

# ha_config VAR KEY DEFAULT: VAR = the last value of KEY, or DEFAULT.
ha_config() {
    local line value=""
    for line in "${HA_CONFIG_LINES[@]}"; do
        [[ $line == "$2="* ]] && value=${line#"$2="}
    done
    printf -v "$1" '%s' "${value:-$3}"
}

# ha_listed VALUE KEY: whether VALUE is exactly one of KEY's values.
ha_listed() {
    local line
    for line in "${HA_CONFIG_LINES[@]}"; do
        [[ $line == "$2=$1" ]] && return 0
    done
    return 1
}

# ha_resolve_user NAME KEY TOOL: NAME must be one of KEY's values and exist here, and
# is never root; sets HA_USER_UID, HA_USER_GID and HA_USER_HOME from its passwd entry.
# shellcheck disable=SC2034  # HA_USER_HOME: used by the wrappers that source this file
HA_USER_UID="" HA_USER_GID="" HA_USER_HOME=""
ha_resolve_user() {
    local name=$1 key=$2 tool=$3 entry
    ha_check user "$name" "$HA_USER_NAME"
    ha_listed "$name" "$key" || ha_refuse "$EX_NOPERM" "user ${name@Q} is not a $key"
    entry=$(getent passwd "$name") || ha_refuse "$EX_NOUSER" "no such user: ${name@Q}"
    # shellcheck disable=SC2034  # HA_USER_HOME: for the wrappers that source this file
    IFS=: read -r _ _ HA_USER_UID HA_USER_GID _ HA_USER_HOME _ <<< "$entry"
    (( HA_USER_UID != 0 )) || ha_refuse "$EX_NOPERM" "refusing to run $tool as uid 0"
}

# ha_as_user: HA_AS_USER = the command prefix that drops to the account ha_resolve_user
# found (by the uid it read, not by name again): its own groups, no new privileges, no
# environment (the command adds what its tool needs).
# shellcheck disable=SC2034  # used by the wrappers that source this file
HA_AS_USER=()
ha_as_user() {
    # shellcheck disable=SC2034
    HA_AS_USER=(setpriv --reuid="$HA_USER_UID" --regid="$HA_USER_GID" --init-groups
        --no-new-privs --reset-env --)
}

# Where each tool is unless the config says otherwise (the agent's [binaries] defaults).
readonly -A HA_DEFAULT_BINARY=(
    [zfs_bin]=/usr/sbin/zfs
    [systemctl_bin]=/usr/bin/systemctl
    [pct_bin]=/usr/sbin/pct
    [git_bin]=/usr/bin/git
    [python_bin]=/usr/bin/python3
    [ansible_playbook_bin]=/usr/bin/ansible-playbook
)

# ha_binary VAR KEY: VAR = the checked real path of the tool KEY names (see
# ha_trusted_path): run that, never the configured path.
ha_binary() {
    local path
    ha_config path "$2" "${HA_DEFAULT_BINARY[$2]}"
    ha_trusted_file "$2" "$path"
    [[ -x $HA_TRUSTED ]] || ha_refuse "$EX_CONFIG" "$2=$path is not executable"
    printf -v "$1" '%s' "$HA_TRUSTED"
}

# ha_python_command: set HA_PYTHON to the command that runs python_bin as root.
# Python finds its virtualenv from the name it is called by, so the checked
# interpreter is run under its configured name (bash's exec -a); a virtualenv's
# files are code run as root, so each of them must be root's alone.
HA_PYTHON=()
ha_python_command() {
    local name python venv
    ha_config name python_bin "${HA_DEFAULT_BINARY[python_bin]}"
    ha_binary python python_bin
    venv=${name%/*}
    venv=${venv%/*}
    if [[ -e ${venv:-/}/pyvenv.cfg ]]; then
        ha_trusted_file "python environment" "${venv:-/}/pyvenv.cfg"
        ha_trusted_tree "python environment" "${HA_TRUSTED%/*}"
    fi
    # shellcheck disable=SC2016  # expanded by the inner bash, not here
    HA_PYTHON=(bash -c 'exec -a "$0" "$@"' "$name" "$python")
}

# ha_run_python ARG...: run python_bin as root with ARGs, as ha_run runs a tool.
ha_run_python() {
    ha_python_command
    ha_run "${HA_PYTHON[@]}" "$@"
}

# ha_check FIELD VALUE REGEX: bounded, no leading '-', full match of REGEX.
ha_check() {
    local field=$1 value=$2 regex=$3
    [[ -n $value ]] || ha_refuse "$EX_USAGE" "$field is empty"
    (( ${#value} <= HA_MAX_NAME )) || ha_refuse "$EX_USAGE" "$field is too long"
    [[ $value != -* ]] || ha_refuse "$EX_USAGE" "$field starts with '-'"
    [[ $value =~ ^${regex}$ ]] || ha_refuse "$EX_USAGE" "$field is not valid: ${value@Q}"
}

# A tool's whole environment (env -i): nothing sudo kept (DISPLAY, XAUTHORITY,
# KRB5CCNAME, TERM, LANGUAGE...) reaches it; a wrapper adds what its tool needs.
HA_TOOL_ENV=("PATH=$PATH" LC_ALL=C)

# ha_timed_command CMD...: set HA_COMMAND to CMD run with exactly HA_TOOL_ENV under
# the time limit, enforced as root because the agent cannot signal root's processes:
# coreutils timeout sends SIGTERM at the limit and SIGKILL to the tool's whole process
# group HA_KILL_GRACE seconds later, and says so on stderr ("timeout: sending signal
# TERM to command ...") before it exits 124, or 137 after SIGKILL. A SIGTERM that sudo
# relays (the agent giving up) reaches timeout too, which ends the tool the same way.
HA_COMMAND=()
ha_timed_command() {
    HA_COMMAND=(env -i "${HA_TOOL_ENV[@]}"
        timeout --verbose --kill-after="$HA_KILL_GRACE" -- "$HA_TIMEOUT" "$@")
}

# ha_timed CMD...: run CMD as above, as a child; its status.
ha_timed() {
    ha_timed_command "$@"
    "${HA_COMMAND[@]}"
}

# ha_run CMD...: log, and replace this shell with CMD run as above (argv only).
ha_run() {
    ha_log info "running: ${*@Q}"
    ha_timed_command "$@"
    exec "${HA_COMMAND[@]}"
}

# ha_load_timeout: HA_TIMEOUT (seconds, as `timeout` reads them) from timeout_seconds.
ha_load_timeout() {
    ha_config HA_TIMEOUT timeout_seconds 60
    [[ $HA_TIMEOUT =~ ^[0-9]{1,5}(\.[0-9]{1,6})?$ && $HA_TIMEOUT =~ [1-9] ]] \
        || ha_refuse "$EX_CONFIG" "timeout_seconds=$HA_TIMEOUT is not a positive number of seconds"
}

# Refuse to run from, or with a config in, a place anyone but root can change.
ha_trusted_file "wrapper library" "${BASH_SOURCE[0]}"
ha_trusted_file wrapper "$0"
# shellcheck disable=SC2034  # used by the wrappers that source this file
readonly HA_WRAPPER=$HA_TRUSTED
ha_load_config
ha_load_timeout
