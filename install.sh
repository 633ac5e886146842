#!/bin/bash
# Install host-agent on this host from this checkout, as root. Idempotent: a
# second run changes nothing and says so. Every step prints one line
# (created/updated/unchanged ...); --dry-run prints them and changes nothing.
#
#   install.sh [--prefix DIR] [--dry-run] [--user NAME] [--approvers-group NAME]
#              [--bind HOST:PORT] [--server-name NAME]... [--server-ip IP]...
#              [--python PATH]
#   install.sh --uninstall [--prefix DIR] [--dry-run] [--user NAME] [--approvers-group NAME]
#
# What goes where, and why the systemd unit is hardened as it is:
# docs/operations.md.
set -euo pipefail
umask 022
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C

usage() {
    sed -n '6,10s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
    cat <<'EOF'

  --prefix DIR            install under DIR instead of / (for review and tests;
                          paths inside the installed files carry DIR too)
  --dry-run               print every step, change nothing (no root needed)
  --uninstall             remove what was installed; keep config, certificates,
                          audit logs, approvals and the accounts
  --user NAME             service account (default host-agent)
  --approvers-group NAME  who may run `host-agent approve` (default host-agent-approvers)
  --bind HOST:PORT        listener written into a new config (default 127.0.0.1:18443)
  --server-name NAME      DNS name in a new server certificate (repeatable; default localhost)
  --server-ip IP          IP address in a new server certificate (repeatable;
                          default 127.0.0.1 and ::1)
  --python PATH           Python for the virtualenv (default /usr/bin/python3)
EOF
}

PREFIX=/ DRY_RUN=0 UNINSTALL=0 SERVICE_USER=host-agent APPROVERS=host-agent-approvers
BIND=127.0.0.1:18443 PYTHON=/usr/bin/python3
SERVER_NAMES=() SERVER_IPS=()
while (($#)); do
    case $1 in
        --prefix | --user | --approvers-group | --bind | --server-name | --server-ip | --python)
            (($# >= 2)) || { echo "install.sh: $1 needs a value" >&2; exit 64; }
            case $1 in
                --prefix) PREFIX=$2 ;;
                --user) SERVICE_USER=$2 ;;
                --approvers-group) APPROVERS=$2 ;;
                --bind) BIND=$2 ;;
                --server-name) SERVER_NAMES+=("$2") ;;
                --server-ip) SERVER_IPS+=("$2") ;;
                --python) PYTHON=$2 ;;
            esac
            shift 2
            ;;
        --dry-run) DRY_RUN=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument: $1 (see --help)" >&2; exit 64 ;;
    esac
done

HA_DRY_RUN=$DRY_RUN
# shellcheck source=scripts/install-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/scripts/install-lib.sh"

# Every value below ends up in sudoers, TOML, a unit file or a sed expression:
# accept only characters that mean the same in all of them.
[[ $PREFIX =~ ^/[A-Za-z0-9._/-]*$ ]] || ha_die 64 "--prefix must be an absolute path of [A-Za-z0-9._/-]"
[[ -d $PREFIX ]] || ha_die 64 "--prefix $PREFIX is not a directory"
for name in "$SERVICE_USER" "$APPROVERS"; do
    [[ $name =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || ha_die 64 "$name is not a valid account or group name"
done
bind_pattern='^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\]):[0-9]{1,5}$'
[[ $BIND =~ $bind_pattern ]] || ha_die 64 "--bind must be HOST:PORT"
for name in "${SERVER_NAMES[@]}"; do
    [[ $name =~ ^[A-Za-z0-9.-]+$ ]] || ha_die 64 "--server-name $name is not a DNS name"
done
for ip in "${SERVER_IPS[@]}"; do
    [[ $ip =~ ^[0-9A-Fa-f.:]+$ ]] || ha_die 64 "--server-ip $ip is not an IP address"
done
((${#SERVER_NAMES[@]})) || SERVER_NAMES=(localhost)
((${#SERVER_IPS[@]})) || SERVER_IPS=(127.0.0.1 ::1)
if [[ $(id -u) != 0 ]] && ! ((DRY_RUN)); then
    ha_die 77 "run as root (or look first with --dry-run)"
fi

ROOT=${PREFIX%/}
while [[ $ROOT == */ ]]; do ROOT=${ROOT%/}; done
VENV=$ROOT/opt/host-agent/venv
STAMP=$VENV/host-agent.stamp
HA_BIN=$VENV/bin/host-agent
LIBEXEC=$ROOT/usr/local/libexec/host-agent
BIN_LINK=$ROOT/usr/local/bin/host-agent
ETC=$ROOT/etc/host-agent
CONFIG=$ETC/agent.toml
WRAPPERS_CONF=$ETC/wrappers.conf
CERTS=$ETC/certs
SUDOERS=$ROOT/etc/sudoers.d/host-agent
PAM=$ROOT/etc/pam.d/host-agent
SUDOERS_APPROVE=$ROOT/etc/sudoers.d/host-agent-approve
LOGROTATE=$ROOT/etc/logrotate.d/host-agent
RELOAD=$ROOT/usr/local/sbin/host-agent-reload
CRON=$ROOT/etc/cron.d/host-agent
UNIT_NAME=host-agent.service
UNIT=$ROOT/etc/systemd/system/$UNIT_NAME
CRL_TIMER_NAME=host-agent-crl.timer
CRL_SERVICE=$ROOT/etc/systemd/system/host-agent-crl.service
CRL_TIMER=$ROOT/etc/systemd/system/$CRL_TIMER_NAME
LOG_DIR=$ROOT/var/log/host-agent
STATE_DIR=$ROOT/var/lib/host-agent
RUN_DIR=$ROOT/run/host-agent
PID_FILE=$RUN_DIR/host-agent.pid
# The agent's stdout and stderr without systemd: root opens it, so it lies in a
# directory of root's, never in the service account's $LOG_DIR.
SERVE_LOG=$ROOT/var/log/host-agent-serve.log

# systemd is used only for an install at / on a host where it is PID 1.
systemd_manages() {
    [[ -z $ROOT && -d /run/systemd/system ]]
}

# Detached: a new session without a controlling terminal (setsid), stdin from
# /dev/null and output to a file, so the service account never holds root's
# terminal (TIOCSTI could type commands into root's shell).
start_command() {
    printf 'setsid -f runuser -u %s -- %s serve --config %s --pid-file %s </dev/null >>%s 2>&1' \
        "$SERVICE_USER" "$HA_BIN" "$CONFIG" "$PID_FILE" "$SERVE_LOG"
}

# Every directory above what install.sh writes, checks or chowns must be root's
# alone, or whoever can write it could swap those files or directories.
require_root_only_ancestors() {
    ha_require_root_only_ancestors "$LIBEXEC" "$WRAPPERS_CONF" "$CERTS" "$VENV" "$BIN_LINK" \
        "$SUDOERS" "$PAM" "$LOGROTATE" "$RELOAD" "$CRON" "$UNIT" "$LOG_DIR" "$STATE_DIR" \
        "$RUN_DIR" "$SERVE_LOG"
}

check_tools() {
    local tool missing=()
    for tool in visudo logrotate useradd groupadd runuser; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    "$PYTHON" -c 'import ensurepip, tomllib, venv' 2>/dev/null || missing+=("$PYTHON -m venv")
    # The wrappers check file ownership with bash's own stat (no process per file).
    [[ -f /usr/lib/bash/stat ]] || missing+=("bash-builtins")
    ((${#missing[@]} == 0)) || ha_die 69 "missing: ${missing[*]}
install them first: apt-get install sudo logrotate passwd util-linux python3-venv bash-builtins"
}

ensure_group() {
    if getent group "$1" >/dev/null; then
        ha_unchanged "group $1"
    else
        ha_changed create "group $1 (system group)"
        ha_run groupadd --system "$1"
    fi
}

# An existing account given with --user must not be one someone logs in with, nor
# one that holds more than the service needs: whoever logs in as it would hold the
# service's sudo grants and its files, and the agent would hold that account's powers.
refuse_login_account() {
    local shell shadow password group
    [[ $(id -u "$SERVICE_USER") != 0 ]] || ha_die 64 "--user $SERVICE_USER is uid 0"
    shell=$(getent passwd "$SERVICE_USER" | cut -d: -f7)
    case $shell in
        /usr/sbin/nologin | /sbin/nologin | /usr/bin/false | /bin/false) ;;
        *) ha_die 64 "--user $SERVICE_USER is a login account (shell ${shell:-none}); give a system account whose shell is nologin, or a new name" ;;
    esac
    for group in $(id -nG "$SERVICE_USER"); do
        case $group in
            "$APPROVERS" | sudo | wheel | adm | root | disk | shadow)
                ha_die 64 "--user $SERVICE_USER is in group $group; the service account must not be"
                ;;
        esac
    done
    # Only root can read shadow; a dry run as another user cannot tell.
    [[ $(id -u) == 0 ]] || return 0
    # An empty shadow field is a login without any password: refused like a password.
    if shadow=$(getent shadow "$SERVICE_USER"); then
        password=$(cut -d: -f2 <<<"$shadow")
    else
        password=$(getent passwd "$SERVICE_USER" | cut -d: -f2)
        [[ $password != x ]] || password='*'
    fi
    case $password in
        '!'* | '*'*) ;;
        *) ha_die 64 "--user $SERVICE_USER has a usable (or empty) password; lock it (passwd -l $SERVICE_USER) or give a new name" ;;
    esac
}

# The accounts are real even with --prefix: the installed files belong to them.
ensure_accounts() {
    if id -u "$SERVICE_USER" >/dev/null 2>&1; then
        refuse_login_account
        ha_unchanged "user $SERVICE_USER"
        SERVICE_GROUP=$(id -gn "$SERVICE_USER")
    else
        SERVICE_GROUP=$SERVICE_USER
        ensure_group "$SERVICE_GROUP"
        ha_changed create "user $SERVICE_USER (system account, no login shell, no home)"
        ha_run useradd --system --gid "$SERVICE_GROUP" --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin \
            --comment "host-agent service" "$SERVICE_USER"
    fi
    ensure_group "$APPROVERS"
}

# Everything pip builds the package from: a change here means a reinstall.
source_digest() {
    (cd "$HA_REPO" && find pyproject.toml README.md host_agent -type f \
        ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 \
        | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-64
}

# The package in its own virtualenv; skipped when this version and source are already there.
install_package() {
    local version wanted verb=create
    version=$("$PYTHON" -c 'import sys, tomllib
print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$HA_REPO/pyproject.toml")
    wanted="host-agent $version source $(source_digest)"
    if [[ -x $HA_BIN && -f $STAMP && $(<"$STAMP") == "$wanted" ]]; then
        ha_unchanged "$VENV (${wanted:0:42})"
        PACKAGE_READY=1
        return
    fi
    [[ -f $VENV/pyvenv.cfg ]] && verb=update
    ha_ensure_parent "$VENV"
    ha_changed "$verb" "$VENV (${wanted:0:42})"
    ((DRY_RUN)) && return
    [[ $verb == update ]] || "$PYTHON" -m venv "$VENV"
    # A clean copy: an in-tree build would leave build/ in the checkout and
    # could package files that no longer exist in it.
    mkdir "$HA_STAGING/src"
    cp -R "$HA_REPO/pyproject.toml" "$HA_REPO/README.md" "$HA_REPO/host_agent" "$HA_STAGING/src/"
    find "$HA_STAGING/src" -name __pycache__ -prune -exec rm -rf {} +
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$HA_STAGING/src" \
        > "$HA_STAGING/pip.log" 2>&1 || { cat "$HA_STAGING/pip.log" >&2; ha_die 70 "pip install failed"; }
    [[ $("$HA_BIN" --version) == "host-agent $version" ]] || ha_die 70 "$HA_BIN is not $version"
    printf '%s\n' "$wanted" > "$STAMP"
    PACKAGE_READY=1
}

# Whether this checkout's package is installed, to render and check files with
# (a dry run that would install it cannot).
PACKAGE_READY=0
package_ready() {
    ((PACKAGE_READY))
}

ensure_link() {
    local target=$1 link=$2
    if [[ -L $link && $(readlink -- "$link") == "$target" ]]; then
        ha_unchanged "$link -> $target"
        return
    fi
    [[ -e $link && ! -L $link ]] && ha_die 73 "$link exists and is not a symlink"
    ha_ensure_parent "$link"
    ha_changed "$([[ -L $link ]] && echo update || echo create)" "$link -> $target"
    ha_run ln -sfn -- "$target" "$link"
}

# A private CA, a server certificate and an empty CRL, made once; then only modes are kept right.
install_certs() {
    local file mode group
    if [[ -e $CERTS/ca.crt ]]; then
        ha_unchanged "$CERTS (certificates present; never replaced)"
    else
        local -a names=()
        for file in "${SERVER_NAMES[@]}"; do names+=(--name "$file"); done
        for file in "${SERVER_IPS[@]}"; do names+=(--ip "$file"); done
        ha_changed create "$CERTS: CA, server certificate (${SERVER_NAMES[*]} ${SERVER_IPS[*]}), CRL"
        ((DRY_RUN)) && return
        "$HA_BIN" certs init "$CERTS" "${names[@]}" >/dev/null
    fi
    # A CA brought from elsewhere (the predecessor's) may never have had a CRL.
    if [[ -e $CERTS/ca.crt && -e $CERTS/ca.key && ! -e $CERTS/crl.pem ]]; then
        ha_changed create "$CERTS/crl.pem (empty, signed by the existing CA)"
        ((DRY_RUN)) && return
        "$HA_BIN" certs crl "$CERTS" --create >/dev/null
    fi
    # The CA key stays root's; the service reads its own key through its group.
    for file in ca.crt:0644 ca.key:0600 server.crt:0644 server.key:0640 crl.pem:0644; do
        mode=${file#*:} file=${file%:*} group=root
        [[ $file == server.key ]] && group=$SERVICE_GROUP
        [[ -f $CERTS/$file ]] || ha_die 66 "$CERTS/$file is missing; restore it, or move $CERTS away to have new certificates made"
        ha_ensure_mode "$CERTS/$file" "$mode" root "$group"
    done
}

render_config() {
    cat <<EOF
# host-agent configuration, written by install.sh, which never overwrites it.
# Every key is described in docs/configuration.md. After editing:
#   $BIN_LINK check-config $CONFIG
#   re-run install.sh (it re-renders $WRAPPERS_CONF,
#     the wrappers' own allowlists, from this file)
#   systemctl reload $UNIT_NAME   (without systemd: kill -HUP the agent)

[server]
# The only listener, mutual TLS. Give each caller a certificate from this CA:
#   $BIN_LINK certs client $CERTS <CN>
bind = "$BIND"
cert = "$CERTS/server.crt"
key = "$CERTS/server.key"
client_ca = "$CERTS/ca.crt"
# Revoke with \`host-agent certs revoke $CERTS <CN>\`. An expired CRL fails
# every handshake: re-issue it before its next_update.
crl_file = "$CERTS/crl.pem"

[runner]
# The agent runs as this account, which sudo lets run only the wrappers here.
service_user = "$SERVICE_USER"
wrapper_dir = "$LIBEXEC"
timeout_seconds = 60

[audit]
# Rotated by $LOGROTATE (daily, 90 kept).
log_path = "$LOG_DIR/audit.jsonl"
rotation = "daily"
retention_days = 90

[approval]
enabled = true
ttl_seconds = 300
store_path = "$STATE_DIR/approvals.sqlite3"
# \`host-agent approve\` on this host, for members of approvers_group (with their
# password, checked as root by the approval helper): usermod -aG $APPROVERS <login>
local_socket = "$RUN_DIR/approve.sock"
approvers_group = "$APPROVERS"
# Client certificates whose CN matches may approve with POST /approve:
# admin_cn_pattern = "admin-*"
# Approvals over Signal (docs/approvals.md):
# signal_url = "http://127.0.0.1:8080"
# signal_number = "+15555550000"
# allowed_approvers = ["+15555550001"]
# webhook_secret = "a random string of at least 32 characters"

# What a profile granted systemd start/stop/restart or zfs snapshot/destroy/
# rollback may act on (fnmatch patterns; absent: nothing). Root-equivalent units
# and the datasets holding /, /etc, /var, ... are refused whatever these say.
# [systemd]
# allowed_units = ["myapp.service", "myapp-*.timer"]
# [zfs]
# allowed_datasets = ["tank/data", "tank/data/*"]

[binaries]
# The interpreter of the root wrappers that run Python (the approval helper,
# host-agent-sudoers): this virtualenv, root-owned.
python = "$VENV/bin/python"

# Who may do what. The first profile whose cn_pattern matches the client
# certificate's CN applies; anything no profile allows is refused.
[[agents]]
cn_pattern = "monitor-*"
agent_type = "monitor"
# The Unix account this caller acts for (git runs as it; it can never approve).
unix_user = "nobody"
autonomy = "read_only"
allowed_operations = ["zfs-list", "zfs-get", "systemd-status", "pct-status"]

# A caller that may snapshot, and destroy once a person approves:
# [[agents]]
# cn_pattern = "librarian-*"
# agent_type = "librarian"
# unix_user = "librarian"
# autonomy = "supervised"
# allowed_operations = ["zfs-list", "zfs-snapshot"]
# requires_approval_for = ["zfs-destroy"]

# What needs a person whoever asks (docs/policy.md): the predecessor's defaults,
# which a file without any [[rules]] gets too. Add your own; the first that
# applies to an operation and resource is used, a deny wherever it stands.
[[rules]]
operation = "zfs-destroy"
approval_required = true
always_ask = true

[[rules]]
operation = "zfs-rollback"
approval_required = true
always_ask = true

[[rules]]
operation = "pct-start"
approval_required = true

[[rules]]
operation = "pct-stop"
approval_required = true

[[rules]]
operation = "pct-destroy"
approval_required = true
always_ask = true
approval_admin_only = true

[[rules]]
operation = "git-checkout"
approval_required = true
EOF
}

install_config() {
    if [[ -e $CONFIG ]]; then
        ha_ensure_mode "$CONFIG" 0640 root "$SERVICE_GROUP"
        return
    fi
    render_config > "$HA_STAGING/agent.toml"
    if package_ready; then
        "$HA_BIN" check-config "$HA_STAGING/agent.toml" >/dev/null \
            || ha_die 78 "the config skeleton does not validate"
    fi
    ha_put_file "$HA_STAGING/agent.toml" "$CONFIG" 0640 root "$SERVICE_GROUP"
}

# The wrappers' allowlists, rendered from the agent's config so both layers agree.
install_wrappers_conf() {
    if package_ready && [[ -f $CONFIG ]]; then
        "$HA_BIN" wrappers-config --config "$CONFIG" --output "$HA_STAGING/wrappers.conf" \
            >/dev/null || ha_die 78 "cannot render $WRAPPERS_CONF from $CONFIG"
        ha_put_file "$HA_STAGING/wrappers.conf" "$WRAPPERS_CONF" 0644 root root
    else
        ha_changed "$([[ -e $WRAPPERS_CONF ]] && echo update || echo create)" \
            "$WRAPPERS_CONF (rendered from $CONFIG by the package being installed)"
    fi
}

# The one way everything else (logrotate, the CRL job) asks the agent to reload.
render_reload() {
    ha_render "$HA_REPO/scripts/host-agent-reload.sh" RUN_DIR="$RUN_DIR" \
        SERVICE_USER="$SERVICE_USER" > "$HA_STAGING/reload"
}

install_reload() {
    render_reload
    ha_put_file "$HA_STAGING/reload" "$RELOAD" 0755 root root
}

install_logrotate() {
    ha_render "$HA_REPO/logrotate/host-agent" LOG_DIR="$LOG_DIR" RELOAD="$RELOAD" \
        SERVICE_USER="$SERVICE_USER" SERVICE_GROUP="$SERVICE_GROUP" SERVE_LOG="$SERVE_LOG" \
        > "$HA_STAGING/logrotate"
    # Its `su` switches to the service account: checkable by root, once that exists.
    if [[ $(id -u) == 0 ]] && id -u "$SERVICE_USER" >/dev/null 2>&1 \
        && ! logrotate -d -s "$HA_STAGING/logrotate.state" "$HA_STAGING/logrotate" \
            > "$HA_STAGING/logrotate.log" 2>&1; then
        cat "$HA_STAGING/logrotate.log" >&2
        ha_die 78 "the rendered logrotate config does not validate"
    fi
    ha_put_file "$HA_STAGING/logrotate" "$LOGROTATE" 0644 root root
}

# The CRL is re-signed daily: by a systemd timer, or by cron where systemd is not PID 1.
install_crl_refresh() {
    ha_render "$HA_REPO/systemd/host-agent-crl.service" HOST_AGENT="$HA_BIN" CERTS="$CERTS" \
        RELOAD="$RELOAD" > "$HA_STAGING/crl.service"
    ha_put_file "$HA_STAGING/crl.service" "$CRL_SERVICE" 0644 root root
    ha_put_file "$HA_REPO/systemd/$CRL_TIMER_NAME" "$CRL_TIMER" 0644 root root
    ha_render "$HA_REPO/cron/host-agent" HOST_AGENT="$HA_BIN" CERTS="$CERTS" RELOAD="$RELOAD" \
        LOGROTATE="$LOGROTATE" > "$HA_STAGING/cron"
    ha_put_file "$HA_STAGING/cron" "$CRON" 0644 root root
}

install_unit() {
    local before=$HA_CHANGES unit
    ha_render "$HA_REPO/systemd/host-agent.service" VENV="$VENV" CONFIG="$CONFIG" \
        SERVICE_USER="$SERVICE_USER" SERVICE_GROUP="$SERVICE_GROUP" > "$HA_STAGING/unit"
    ha_put_file "$HA_STAGING/unit" "$UNIT" 0644 root root
    install_crl_refresh
    if [[ -n $ROOT ]]; then
        ha_unchanged "systemd: $UNIT_NAME and $CRL_TIMER_NAME not enabled (installed under --prefix)"
    elif ! systemd_manages; then
        ha_unchanged "systemd: not running as PID 1 here, $UNIT_NAME and $CRL_TIMER_NAME not enabled"
    else
        ((HA_CHANGES == before)) || ha_run systemctl daemon-reload
        for unit in "$UNIT_NAME" "$CRL_TIMER_NAME"; do
            if systemctl --quiet is-enabled "$unit" 2>/dev/null; then
                ha_unchanged "systemd: $unit enabled"
            else
                ha_changed enable "systemd: $unit"
                ha_run systemctl --quiet enable "$unit"
            fi
        done
        # The timer runs from now on; the agent itself is started by the operator.
        if ! systemctl --quiet is-active "$CRL_TIMER_NAME"; then
            ha_changed start "systemd: $CRL_TIMER_NAME"
            ha_run systemctl start "$CRL_TIMER_NAME"
        fi
    fi
}

next_steps() {
    cat <<EOF

Next:
  - edit $CONFIG (profiles for your callers), then re-run install.sh
  - issue a client certificate: $BIN_LINK certs client $CERTS <CN>
  - let people approve on this host: usermod -aG $APPROVERS <login>
EOF
    if systemd_manages; then
        echo "  - start: systemctl start $UNIT_NAME (running already: systemctl restart $UNIT_NAME)"
    else
        echo "  - systemd is not PID 1 here (or not used under --prefix); start the agent,"
        echo "    detached from your terminal, with"
        echo "      $(start_command)"
        echo "    ($RUN_DIR is on tmpfs: after a reboot re-run install.sh first)"
        if ! command -v cron >/dev/null; then
            echo "  - no cron here to run $CRON: re-sign the CRL before it expires"
            echo "      $BIN_LINK certs crl $CERTS && $RELOAD"
        fi
    fi
}

main_install() {
    check_tools
    require_root_only_ancestors
    ensure_accounts
    ha_ensure_parent "$ETC"
    ha_ensure_dir "$ETC" 0750 root "$SERVICE_GROUP"
    ha_ensure_dir "$CERTS" 0750 root "$SERVICE_GROUP"
    ha_ensure_parent "$LOG_DIR"
    ha_ensure_dir "$LOG_DIR" 0750 "$SERVICE_USER" "$SERVICE_GROUP"
    ha_ensure_parent "$STATE_DIR"
    ha_ensure_dir "$STATE_DIR" 0700 "$SERVICE_USER" "$SERVICE_GROUP"
    ha_ensure_parent "$RUN_DIR"
    ha_ensure_dir "$RUN_DIR" 0755 "$SERVICE_USER" "$SERVICE_GROUP"
    install_package
    ensure_link "$HA_BIN" "$BIN_LINK"
    install_certs
    install_config
    install_wrappers_conf
    ha_install_wrappers "$LIBEXEC" "$WRAPPERS_CONF" "$SERVICE_USER" "$SUDOERS"
    # --- approval helper (host-agent approve): begin ---
    # Approvers run the root helper through sudo; it checks their password itself,
    # so the service account no longer has a PAM wrapper (removed from older installs).
    ha_put_file "$HA_REPO/pam/host-agent" "$PAM" 0644 root root
    ha_render "$HA_REPO/sudoers/host-agent-approve" APPROVERS="$APPROVERS" WRAPPER_DIR="$LIBEXEC" \
        > "$HA_STAGING/sudoers-approve"
    visudo -cqf "$HA_STAGING/sudoers-approve" \
        || ha_die 78 "the rendered approvers' sudoers drop-in does not validate"
    ha_put_file "$HA_STAGING/sudoers-approve" "$SUDOERS_APPROVE" 0440 root root
    ha_remove "$LIBEXEC/host-agent-pam"
    # --- approval helper: end ---
    install_reload
    install_logrotate
    install_unit
    if ((HA_CHANGES == 0)); then
        echo "nothing to change"
    elif ((DRY_RUN)); then
        echo "dry run: $HA_CHANGES change(s) would be made, none was"
    else
        echo "$HA_CHANGES change(s) made"
        next_steps
    fi
}

# Without systemd: TERM the agent named by the pid file and wait until it is
# gone. The pid file is the service account's, so root never reads it: the
# reload script (this checkout's) reads and signals as the service account.
stop_unmanaged_agent() {
    [[ -e $PID_FILE || -L $PID_FILE ]] && id -u "$SERVICE_USER" >/dev/null 2>&1 || return 0
    ha_changed stop "the agent named in $PID_FILE, if it runs"
    ((DRY_RUN)) && return
    render_reload
    local status=0
    sh "$HA_STAGING/reload" TERM || status=$?
    case $status in
        0) ;;
        # Not a regular file, or no pid of the service account's in it: nothing to stop there.
        65) printf 'not stopped: %s names no process of %s; stop the agent yourself if one runs\n' \
            "$PID_FILE" "$SERVICE_USER" ;;
        *) ha_die 75 "the agent named in $PID_FILE did not stop; stop it and run --uninstall again" ;;
    esac
}

# remove_run_dir: $RUN_DIR's entries are removed as the service account (root
# never walks a directory the account can change), then the empty directory.
remove_run_dir() {
    if id -u "$SERVICE_USER" >/dev/null 2>&1; then
        runuser -u "$SERVICE_USER" -- find "$RUN_DIR" -mindepth 1 -delete 2>/dev/null || true
    fi
    rmdir -- "$RUN_DIR" 2>/dev/null \
        || printf 'kept %s: it holds files %s cannot remove\n' "$RUN_DIR" "$SERVICE_USER"
}

main_uninstall() {
    local unit before
    require_root_only_ancestors
    if systemd_manages && [[ -f $UNIT ]]; then
        for unit in "$CRL_TIMER_NAME" "$UNIT_NAME"; do
            if systemctl --quiet is-enabled "$unit" 2>/dev/null \
                || systemctl --quiet is-active "$unit"; then
                ha_changed disable "systemd: $unit (stopped)"
                ha_run systemctl --quiet disable --now "$unit"
            fi
        done
    else
        stop_unmanaged_agent
    fi
    before=$HA_CHANGES
    for unit in "$UNIT" "$CRL_SERVICE" "$CRL_TIMER"; do
        ha_remove "$unit"
    done
    if systemd_manages && ((HA_CHANGES > before)); then
        ha_run systemctl daemon-reload
    fi
    ha_remove "$CRON"
    ha_remove "$LOGROTATE"
    ha_remove "$RELOAD"
    ha_remove "$PAM"
    ha_remove "$SUDOERS_APPROVE"  # approval helper
    ha_remove "$SUDOERS"
    ha_uninstall_wrappers "$LIBEXEC"
    if [[ -L $BIN_LINK && $(readlink -- "$BIN_LINK") != "$HA_BIN" ]]; then
        printf 'kept %s: it does not point to %s\n' "$BIN_LINK" "$HA_BIN"
    else
        ha_remove "$BIN_LINK"
    fi
    if [[ -f $VENV/pyvenv.cfg ]]; then
        ha_changed remove "$VENV"
        ha_run rm -rf -- "$VENV"
        ((DRY_RUN)) || rmdir -- "$(dirname "$VENV")" 2>/dev/null || true
    else
        ha_unchanged "$VENV (not installed)"
    fi
    if [[ -d $RUN_DIR ]]; then
        ha_changed remove "$RUN_DIR"
        ha_run remove_run_dir
    else
        ha_unchanged "$RUN_DIR (not installed)"
    fi
    local kept=() entry
    for entry in "$ETC:config, wrappers' allowlists, certificates" "$LOG_DIR:audit logs" \
        "$STATE_DIR:approvals"; do
        if [[ -d ${entry%%:*} ]]; then
            kept+=("${entry%%:*}")
            echo "kept ${entry%%:*} (${entry#*:})"
        fi
    done
    echo "kept user $SERVICE_USER and group $APPROVERS (they own what is kept)"
    if ((HA_CHANGES == 0)); then
        echo "nothing to change"
    elif ((DRY_RUN)); then
        echo "dry run: $HA_CHANGES change(s) would be made, none was"
    else
        echo "$HA_CHANGES change(s) made"
    fi
    echo "To remove the rest too:${kept[*]:+ rm -rf ${kept[*]};} userdel $SERVICE_USER; groupdel $APPROVERS"
}

if ((UNINSTALL)); then
    main_uninstall
else
    main_install
fi
