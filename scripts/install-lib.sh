# shellcheck shell=bash
# Shared by install.sh and scripts/install-wrappers.sh; sourced, never executed.
#
# Every step reports one line: "created X", "updated X", "removed X" when it
# changes something, "unchanged X" when it does not. With HA_DRY_RUN=1 nothing
# is changed and the lines say "would create X", ... instead. Files are put in
# place atomically (a temporary file in the same directory, then rename), so a
# reader such as sudo never sees half a file.

HA_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HA_DRY_RUN=${HA_DRY_RUN:-0}
HA_CHANGES=0
# Directories a dry run would have created, so that it reports each only once.
declare -A HA_PLANNED=()
# Rendered candidates are built here, checked, then compared with what is installed.
HA_STAGING=$(mktemp -d)
trap 'rm -rf "$HA_STAGING"' EXIT

ha_die() {
    printf '%s: %s\n' "${0##*/}" "$2" >&2
    exit "$1"
}

# ha_changed VERB WHAT: report a change (create, update, remove, enable, stop, ...) and count it.
ha_changed() {
    local past
    HA_CHANGES=$((HA_CHANGES + 1))
    case $1 in
        *e) past=${1}d ;;
        stop) past=stopped ;;
        *) past=${1}ed ;;
    esac
    if ((HA_DRY_RUN)); then
        printf 'would %s %s\n' "$1" "$2"
    else
        printf '%s %s\n' "$past" "$2"
    fi
}

ha_unchanged() {
    printf 'unchanged %s\n' "$1"
}

# ha_run CMD...: run a changing command, unless this is a dry run.
ha_run() {
    ((HA_DRY_RUN)) || "$@"
}

# ha_render TEMPLATE NAME=VALUE...: TEMPLATE with every @NAME@ replaced. Values
# are paths and account names the callers have already restricted to [A-Za-z0-9._/:-].
ha_render() {
    local template=$1 pair
    local -a expressions=()
    shift
    for pair in "$@"; do
        expressions+=(-e "s|@${pair%%=*}@|${pair#*=}|g")
    done
    sed "${expressions[@]}" "$template"
}

# ha_attributes PATH: "MODE OWNER GROUP" as stat prints them (mode without a leading 0).
ha_attributes() {
    stat -c '%a %U %G' -- "$1"
}

# ha_is_dir DIR: DIR exists (or a dry run would have created it).
ha_is_dir() {
    [[ -d $1 || -n ${HA_PLANNED[$1]:-} ]]
}

# ha_create_dir DIR MODE OWNER GROUP: make DIR and its missing parents.
ha_create_dir() {
    HA_PLANNED[$1]=1
    ha_run install -d -m "$2" -o "$3" -g "$4" "$1"
}

# ha_ensure_dir DIR MODE OWNER GROUP: create DIR, or correct its mode and owner.
ha_ensure_dir() {
    local dir=$1 mode=$2 owner=$3 group=$4
    ((HA_DRY_RUN)) && [[ -n ${HA_PLANNED[$dir]:-} ]] && return
    if [[ -d $dir && ! -L $dir ]]; then
        if [[ $(ha_attributes "$dir") == "${mode#0} $owner $group" ]]; then
            ha_unchanged "$dir"
            return
        fi
        ha_changed update "$dir (mode $mode, $owner:$group)"
        ha_run chown "$owner:$group" "$dir"
        ha_run chmod "$mode" "$dir"
        return
    fi
    [[ -e $dir || -L $dir ]] && ha_die 73 "$dir exists and is not a directory"
    ha_changed create "$dir (mode $mode, $owner:$group)"
    ha_create_dir "$dir" "$mode" "$owner" "$group"
}

# ha_root_only_dir DIR: DIR (symlinks followed) is owned by root and writable by
# no one else; group or world write only with the sticky bit (as /tmp), which
# keeps others from renaming or removing root's entries.
ha_root_only_dir() {
    local owner mode
    read -r owner mode < <(stat -L -c '%u %a' -- "$1")
    mode=$((8#$mode))
    [[ $owner == 0 ]] && { ((!(mode & 8#022))) || ((mode & 8#1000)); }
}

# ha_require_root_only_ancestors PATH...: refuse to go on unless every existing
# directory above each PATH, as written and with symlinks resolved, is root's
# alone. Whoever can write one of them can swap what root installs, checks or
# chowns below it (a wrapper, wrappers.conf, the service's own directories).
ha_require_root_only_ancestors() {
    local path dir
    for path in "$@"; do
        for dir in "$(dirname -- "$path")" "$(dirname -- "$(realpath -m -- "$path")")"; do
            while :; do
                if [[ -e $dir ]] && ! ha_root_only_dir "$dir"; then
                    ha_die 73 "$dir (above $path) is not root's alone: owned by $(stat -L -c '%U, mode %a' -- "$dir"); make it root-owned and not group- or world-writable"
                fi
                [[ $dir == / ]] && break
                dir=$(dirname -- "$dir")
            done
        done
    done
}

# ha_ensure_parent PATH: create PATH's directory (root-owned, 0755) if it is missing.
# Existing directories are left as they are: under / they are the system's own.
ha_ensure_parent() {
    local parent
    parent=$(dirname "$1")
    ha_is_dir "$parent" && return
    ha_changed create "$parent"
    ha_create_dir "$parent" 0755 root root
}

# ha_put_file SOURCE DEST MODE OWNER GROUP: make DEST a copy of SOURCE with that mode and owner.
ha_put_file() {
    local source=$1 dest=$2 mode=$3 owner=$4 group=$5 verb=create temporary
    if [[ -L $dest ]]; then
        verb=update
    elif [[ -f $dest && ! -r $dest ]]; then
        # Only in a dry run as another user than root.
        printf 'unknown %s (not readable by %s)\n' "$dest" "$(id -un)"
        return
    elif [[ -f $dest ]]; then
        if cmp -s -- "$source" "$dest" && [[ $(ha_attributes "$dest") == "${mode#0} $owner $group" ]]
        then
            ha_unchanged "$dest"
            return
        fi
        verb=update
    elif [[ -e $dest ]]; then
        ha_die 73 "$dest exists and is not a regular file"
    fi
    ha_ensure_parent "$dest"
    ha_changed "$verb" "$dest (mode $mode, $owner:$group)"
    ((HA_DRY_RUN)) && return
    # Ending in "~": sudo's includedir and logrotate's include skip it meanwhile.
    temporary=$(mktemp --suffix='~' "$(dirname "$dest")/.${dest##*/}.XXXXXX")
    if ! { cat -- "$source" > "$temporary" && chown "$owner:$group" "$temporary" \
        && chmod "$mode" "$temporary" && mv -f -- "$temporary" "$dest"; }; then
        rm -f -- "$temporary"
        ha_die 74 "cannot install $dest"
    fi
}

# ha_ensure_mode PATH MODE OWNER GROUP: correct an existing file's mode and owner.
ha_ensure_mode() {
    local path=$1 mode=$2 owner=$3 group=$4
    # chown and chmod would act on a link's target.
    [[ -L $path ]] && ha_die 73 "$path is a symlink; expected a file"
    if [[ $(ha_attributes "$path") == "${mode#0} $owner $group" ]]; then
        ha_unchanged "$path"
        return
    fi
    ha_changed update "$path (mode $mode, $owner:$group)"
    ha_run chown "$owner:$group" "$path"
    ha_run chmod "$mode" "$path"
}

# ha_remove PATH: remove a file or symlink if it is there.
ha_remove() {
    if [[ -e $1 || -L $1 ]]; then
        ha_changed remove "$1"
        ha_run rm -f -- "$1"
    else
        ha_unchanged "$1 (not installed)"
    fi
}

# ha_wrappers: the wrapper scripts installed beside the lib, one path per line.
ha_wrappers() {
    local wrapper
    for wrapper in "$HA_REPO"/wrappers/host-agent-*; do
        [[ $wrapper == */host-agent-lib.sh ]] || printf '%s\n' "$wrapper"
    done
}

# ha_install_wrappers DIR CONFIG_FILE USER SUDOERS_FILE: the wrappers root-owned in
# DIR, their lib reading CONFIG_FILE, and a sudoers drop-in that lets USER run
# exactly them, checked by `visudo -cf` before it is put in place.
ha_install_wrappers() {
    local dir=$1 config=$2 user=$3 sudoers=$4 wrapper
    ha_require_root_only_ancestors "$dir" "$config" "$sudoers"
    ha_ensure_parent "$dir"
    ha_ensure_dir "$dir" 0755 root root
    sed "s|^readonly HA_WRAPPER_CONFIG=.*|readonly HA_WRAPPER_CONFIG=$config|" \
        "$HA_REPO/wrappers/host-agent-lib.sh" > "$HA_STAGING/host-agent-lib.sh"
    ha_put_file "$HA_STAGING/host-agent-lib.sh" "$dir/host-agent-lib.sh" 0644 root root
    while read -r wrapper; do
        ha_put_file "$wrapper" "$dir/${wrapper##*/}" 0755 root root
    done < <(ha_wrappers)
    ha_render "$HA_REPO/sudoers/host-agent" SERVICE_USER="$user" WRAPPER_DIR="$dir" \
        > "$HA_STAGING/sudoers"
    visudo -cqf "$HA_STAGING/sudoers" || ha_die 78 "the rendered sudoers drop-in does not validate"
    ha_put_file "$HA_STAGING/sudoers" "$sudoers" 0440 root root
}

# ha_uninstall_wrappers DIR: remove what ha_install_wrappers put in DIR, then DIR if empty.
ha_uninstall_wrappers() {
    local dir=$1 wrapper
    ha_remove "$dir/host-agent-lib.sh"
    while read -r wrapper; do
        ha_remove "$dir/${wrapper##*/}"
    done < <(ha_wrappers)
    if [[ ! -d $dir ]]; then
        return
    elif ((HA_DRY_RUN)) || rmdir -- "$dir" 2>/dev/null; then
        ha_changed remove "$dir"
    else
        printf 'kept %s: it holds files host-agent did not install\n' "$dir"
    fi
}
