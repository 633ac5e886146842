"""Config loading: the predecessor's files load, every problem names its key."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from host_agent.cli import main
from host_agent.config import Autonomy, Secret, load_config, parse_config
from host_agent.errors import ConfigError

# The predecessor (clash-host-agent) configs of the migration corpus.
CORPUS = Path(__file__).parent / "predecessor"
# Every section and key the predecessor documented.
PREDECESSOR_CONFIG = (CORPUS / "documented.toml").read_text()

# The predecessor README's example, with its [[agent]]/[[rule]] spelling.
README_CONFIG = (CORPUS / "readme.toml").read_text()


# The predecessor's config with the rotation logrotate/host-agent applies, and a way for
# Signal replies to come back: no warnings.
AS_SHIPPED = (
    PREDECESSOR_CONFIG.replace('rotation = "hourly"', 'rotation = "daily"')
    .replace("retention_days = 30", "retention_days = 90")
    .replace(
        'admin_cn_pattern = "admin-*"\n', 'admin_cn_pattern = "admin-*"\nbridge_cn = "bridge"\n'
    )
    .replace("[[agents.pattern_rules]]", "[[agents.resource_rules]]")
    .replace('pattern = "tank/media(/.*)?"', 'match = "tank/media(/.*)?"')
    + '\n[zfs]\nallowed_datasets = ["tank", "tank/*"]\n'
    + "\n[wrappers.zfs_destroy]\nenabled = true\nallowed_uids = [1001]\n"
)


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_predecessor_config_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, PREDECESSOR_CONFIG))

    assert [w.split(" = ")[0].split(":")[0] for w in config.warnings] == [
        "audit.rotation",
        "audit.retention_days",
        "agents[0].pattern_rules",  # host-agent 0.1 read them as resource_rules
        "approval",  # its replies came in unauthenticated; here they need a secret or a CN
        "zfs.allowed_datasets",  # it let zfs change any dataset; here only the listed ones
        "wrappers.zfs_destroy",  # destroy is opt-in at the OS layer too, as it was there
    ]
    assert config.server.bind == "0.0.0.0:18443"
    assert (config.server.host, config.server.port) == ("0.0.0.0", 18443)
    assert config.server.cert == Path("/etc/clash/certs/server.crt")
    assert config.server.crl_file == Path("/etc/clash/certs/ca.crl")
    assert (config.audit.log_path, config.audit.rotation, config.audit.retention_days) == (
        Path("/var/log/clash/audit.jsonl"),
        "hourly",
        30,
    )
    approval = config.approval
    assert (approval.enabled, approval.ttl_seconds, approval.token_entropy_bits) == (True, 600, 80)
    assert approval.signal_webhook == "https://signal.example.com/webhook"
    assert approval.allowed_approvers == ("+15555550001", "+15555550002")
    assert approval.token_secret == Secret("s3cr3t-hmac-key")
    assert approval.admin_cn_pattern == "admin-*"
    assert (config.metrics.enabled, config.metrics.bind) == (True, "127.0.0.1:19090")
    assert config.rate_limit.max_requests == 10
    assert config.rate_limit.window_seconds == 30
    assert config.rate_limit.endpoints == ("/zfs/destroy", "/approve")

    librarian, claude = config.agents
    assert librarian.autonomy is Autonomy.SUPERVISED
    assert librarian.allowed_operations == ("zfs-list", "zfs-snapshot")
    assert librarian.requires_approval_for == ("zfs-destroy",)
    [restriction] = librarian.pattern_rules
    assert restriction.operation == "zfs-snapshot"
    assert restriction.pattern.fullmatch("tank/media/photos")
    assert not librarian.allow_full_autonomy_bypass
    assert (claude.autonomy, claude.allow_full_autonomy_bypass) == (Autonomy.FULL, True)
    assert claude.pattern_rules == ()

    destroy, pct = config.rules
    assert (destroy.operation, destroy.always_ask, destroy.deny) == ("zfs-destroy", True, False)
    assert destroy.pattern is not None and destroy.pattern.pattern == "tank/.*"
    assert (pct.pattern, pct.approval_admin_only) == (None, True)
    assert config.git.allowed_repos == (Path("/srv"), Path("/opt"))
    assert (config.exec.enabled, config.exec.allowed_commands) == (True, (Path("/usr/bin/uptime"),))


def test_defaults_for_optional_sections(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, README_CONFIG))
    assert config.server.crl_file is None
    assert (config.audit.rotation, config.audit.retention_days) == ("daily", 90)
    assert config.approval.enabled is True
    assert config.approval.token_secret is None
    assert config.rate_limit.endpoints == ("/zfs/destroy", "/approve", "/pending")
    assert config.git.allowed_repos == ()
    assert config.exec.enabled is False


def test_readme_singular_spelling_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, README_CONFIG))
    [agent] = config.agents
    [rule] = config.rules
    assert agent.cn_pattern == "librarian*"
    assert rule.operation == "zfs-destroy"
    assert rule.pattern is not None and rule.pattern.pattern == "tank/.*"


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        pytest.param(
            '\n[[agents]]\ncn_pattern = "x*"\nagent_type = "x"\nunix_user = "x"\n',
            "agent: use either [[agent]] or [[agents]], not both",
            id="agent-and-agents",
        ),
        pytest.param(
            '\n[[rules]]\noperation = "zfs-list"\n',
            "rule: use either [[rule]] or [[rules]], not both",
            id="rule-and-rules",
        ),
    ],
)
def test_both_spellings_at_once_is_an_error(tmp_path: Path, extra: str, problem: str) -> None:
    path = write(tmp_path, README_CONFIG + extra)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == (problem,)


def test_predecessor_only_keys_load_with_warnings(tmp_path: Path) -> None:
    text = PREDECESSOR_CONFIG.replace(
        "[approval]\n", '[approval]\nidentity_plugin = "command:/usr/local/bin/check"\n'
    ).replace("[exec]\n", '[exec]\nansible_job_queue = "/var/lib/clash/jobs"\n')
    config = load_config(write(tmp_path, text))
    # The identity plugin works here; the Ansible job queue (a stub there) does not exist.
    assert config.approval.identity_plugin == "command:/usr/local/bin/check"
    # Beside the rotation, Signal-reply and dataset allowlist warnings every predecessor
    # config gets:
    beyond_rotation = [
        w
        for w in config.warnings
        if not w.startswith(
            ("audit.", "approval:", "zfs.", "agents[0].pattern_rules", "wrappers.zfs_destroy")
        )
    ]
    assert len(beyond_rotation) == 1
    assert beyond_rotation[0].startswith("exec.ansible_job_queue: ")


@pytest.mark.parametrize(
    "value",
    ["command:bin/check", "command:", "check", "ftp://127.0.0.1/x", "http://"],
)
def test_identity_plugin_must_be_an_absolute_command_or_an_http_url(
    tmp_path: Path, value: str
) -> None:
    text = README_CONFIG.replace("[approval]\n", f'[approval]\nidentity_plugin = "{value}"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert [p for p in caught.value.problems if p.startswith("approval.identity_plugin")]


def test_relative_paths_are_resolved_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (
        '[server]\ncert = "certs/server.crt"\nkey = "/abs/server.key"\n'
        'client_ca = "../ca/ca.crt"\ncrl_file = "certs/crl.pem"\n'
        '[audit]\nlog_path = "audit.jsonl"\n'
        '[[agents]]\ncn_pattern = "a*"\nagent_type = "a"\nunix_user = "a"\n'
    )
    write(tmp_path, text, "etc/agent.toml")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load_config(Path("../etc/agent.toml"))

    etc = tmp_path.resolve() / "etc"
    assert config.server.cert == etc / "certs/server.crt"
    assert config.server.key == Path("/abs/server.key")
    assert config.server.client_ca == etc / "../ca/ca.crt"
    assert config.server.crl_file == etc / "certs/crl.pem"
    assert config.audit.log_path == etc / "audit.jsonl"


def test_token_secret_never_shows(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, PREDECESSOR_CONFIG))
    for text in (
        repr(config),
        str(config),
        repr(config.approval),
        str(config.approval.token_secret),
    ):
        assert "s3cr3t-hmac-key" not in text
    assert "Secret('********')" in repr(config)
    assert config.approval.token_secret is not None
    assert config.approval.token_secret.reveal() == "s3cr3t-hmac-key"


# --- errors -----------------------------------------------------------------

DROP: Any = object()


def document(**overrides: Any) -> dict[str, Any]:
    """A minimal valid document; a dict override merges into its section, DROP removes."""
    doc: dict[str, Any] = {
        "server": {"cert": "server.crt", "key": "server.key", "client_ca": "ca.crt"},
        "audit": {"log_path": "audit.jsonl"},
        "agents": [agent()],
    }
    for name, value in overrides.items():
        if value is DROP:
            doc.pop(name)
        elif isinstance(value, dict) and isinstance(doc.get(name), dict):
            for key, item in value.items():
                if item is DROP:
                    doc[name].pop(key)
                else:
                    doc[name][key] = item
        else:
            doc[name] = value
    return copy.deepcopy(doc)


def agent(**keys: Any) -> dict[str, Any]:
    return {"cn_pattern": "librarian*", "agent_type": "librarian", "unix_user": "librarian", **keys}


SOURCE = Path("/etc/host-agent/agent.toml")


def test_minimal_document_is_valid() -> None:
    config = parse_config(document(), SOURCE)
    assert config.server.cert == Path("/etc/host-agent/server.crt")


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        pytest.param(
            {"agents": [agent(autonomy="Full")]},
            "agents[0].autonomy: must be one of read_only, supervised, full",
            id="agent-autonomy",
        ),
        pytest.param(
            {"agents": [agent(), agent(unix_user="Bad User")]},
            "agents[1].unix_user: must be a Unix account name",
            id="agent-unix-user",
        ),
        pytest.param(
            {"agents": [agent(allowed_operations=["zfs-frobnicate*"])]},
            "agents[0].allowed_operations: 'zfs-frobnicate*' matches no known operation",
            id="agent-operation-glob-matches-nothing",
        ),
        pytest.param(
            {"agents": [agent(pattern_rules=[{"operation": "zfs-snapshot", "pattern": "a["}])]},
            "agents[0].pattern_rules[0].pattern: not a valid regular expression",
            id="pattern-rule-bad-regex",
        ),
        pytest.param(
            {"rules": [{"operation": "zfs-list"}, {"operation": "zfs-destory"}]},
            "rules[1].operation: unknown operation 'zfs-destory'",
            id="rule-misspelt-operation",
        ),
        pytest.param(
            {"rules": [{"operation": "zfs-list", "pattern": "tank/(.*"}]},
            "rules[0].pattern: not a valid regular expression",
            id="rule-bad-regex",
        ),
        pytest.param(
            {"rules": [{"operation": "zfs-list", "deny": True, "approval_required": True}]},
            "rules[0].deny: a deny rule cannot also ask for approval",
            id="rule-deny-and-approval",
        ),
        pytest.param(
            {"server": {"bind": "localhost"}},
            "server.bind: must be HOST:PORT",
            id="server-bind",
        ),
        pytest.param({"colour": "blue"}, "colour: unknown key", id="unknown-top-level-key"),
        pytest.param(
            {"server": {"bnid": "127.0.0.1:1"}},
            "server.bnid: unknown key",
            id="unknown-key-in-section",
        ),
        pytest.param(
            {"agents": [agent(autonmy="full")]},
            "agents[0].autonmy: unknown key",
            id="unknown-key-in-agent",
        ),
        pytest.param(
            {"server": DROP},
            "server: section [server] is required",
            id="missing-section",
        ),
        pytest.param(
            {"audit": {"log_path": DROP}}, "audit.log_path: is required", id="missing-key"
        ),
        pytest.param(
            {"agents": [{"cn_pattern": "x*", "agent_type": "x"}]},
            "agents[0].unix_user: is required",
            id="missing-agent-key",
        ),
        pytest.param(
            {"approval": {"enabled": "yes"}},
            "approval.enabled: must be a boolean, got a string",
            id="string-for-bool",
        ),
        pytest.param(
            {"approval": {"ttl_seconds": True}},
            "approval.ttl_seconds: must be an integer, got a boolean",
            id="bool-for-int",
        ),
        pytest.param(
            {"audit": {"retention_days": 0}},
            "audit.retention_days: must be between 1 and 36500",
            id="int-out-of-range",
        ),
        pytest.param(
            {"approval": {"token_entropy_bits": 128}},
            "approval.token_entropy_bits: must be 80",
            id="token-entropy-bits",
        ),
        pytest.param(
            {"approval": {"signal_webhook": "signal.example.com"}},
            "approval.signal_webhook: must be an http(s) URL",
            id="signal-webhook-not-a-url",
        ),
        pytest.param(
            {"git": {"allowed_repos": ["srv"]}},
            "git.allowed_repos: 'srv' is not an absolute path",
            id="git-relative-repo",
        ),
        pytest.param(
            {"git": {"allowed_repos": ["/srv/../etc"]}},
            "git.allowed_repos: '/srv/../etc' must not contain '.' or '..' components",
            id="git-dotdot-repo",
        ),
        pytest.param(
            {"exec": {"allowed_commands": ["/usr/bin/up time"]}},
            "exec.allowed_commands: '/usr/bin/up time' is not an absolute path",
            id="exec-command-with-space",
        ),
        pytest.param(
            {"exec": {"argument_patterns": {"/usr/bin/du": ["-s"]}}},
            "exec.argument_patterns./usr/bin/du: names a command that is not in allowed_commands",
            id="exec-patterns-for-unlisted-command",
        ),
        pytest.param(
            {
                "exec": {
                    "allowed_commands": ["/usr/bin/du"],
                    "argument_patterns": {"/usr/bin/du": ["\\d+"]},
                }
            },
            "exec.argument_patterns./usr/bin/du: pattern '\\\\d+' uses syntax POSIX ERE lacks",
            id="exec-pattern-perl-escape",
        ),
        pytest.param(
            {
                "exec": {
                    "allowed_commands": ["/usr/bin/du"],
                    "argument_patterns": {"/usr/bin/du": ["(?i)x"]},
                }
            },
            "exec.argument_patterns./usr/bin/du: pattern '(?i)x' uses syntax POSIX ERE lacks",
            id="exec-pattern-inline-flag",
        ),
        pytest.param(
            {
                "exec": {
                    "allowed_commands": ["/usr/bin/du"],
                    "argument_patterns": {"/usr/bin/du": ["[[:digit:]]+"]},
                }
            },
            "exec.argument_patterns./usr/bin/du: pattern '[[:digit:]]+' uses a POSIX class",
            id="exec-pattern-posix-class",
        ),
        pytest.param(
            {"exec": {"allowed_playbooks": ["site.yml"]}},
            "exec.allowed_playbooks: needs exec.playbook_dir",
            id="exec-playbooks-without-dir",
        ),
        pytest.param(
            {"exec": {"playbook_dir": "/etc/pb", "allowed_playbooks": ["../site.yml"]}},
            "exec.allowed_playbooks: '../site.yml' must be a file name ending in .yml",
            id="exec-playbook-path",
        ),
        pytest.param(
            {"binaries": {"zfs": "zfs"}},
            "binaries.zfs: 'zfs' is not an absolute path",
            id="binary-relative",
        ),
        pytest.param(
            {"agents": [agent(allow_recursive="yes")]},
            "agents[0].allow_recursive: must be a boolean",
            id="allow-recursive-not-bool",
        ),
        pytest.param(
            {"approval": {"bridge_cn": "librarian-bridge"}},
            "approval.bridge_cn: 'librarian-bridge' matches an [[agents]] cn_pattern",
            id="bridge-cn-is-an-agent",
        ),
        pytest.param(
            {"approval": {"signal_url": "http://127.0.0.1:8080"}},
            "approval.signal_number: is required with signal_url",
            id="signal-url-without-number",
        ),
        pytest.param(
            {"approval": {"allowed_approvers": ["5555550001"]}},
            "approval.allowed_approvers: '5555550001': must be an E.164 number",
            id="approver-not-e164",
        ),
        pytest.param(
            {"rate_limit": {"read": {"requests": 0}}},
            "rate_limit.read.requests: must be between 1 and 1000000",
            id="rate-limit-zero-requests",
        ),
        pytest.param(
            {"rate_limit": {"mutating": {"per_minute": 5}}},
            "rate_limit.mutating.per_minute: unknown key",
            id="rate-limit-unknown-key",
        ),
        pytest.param(
            {"rate_limit": {"approval": 10}},
            "rate_limit.approval: must be a table",
            id="rate-limit-class-not-table",
        ),
        pytest.param(
            {"approval": {"local_socket": "/run/host-agent/approve.sock"}},
            "approval.approvers_group: is required with local_socket",
            id="local-socket-without-group",
        ),
        pytest.param(
            {"approval": {"approvers_group": "Admins;x"}},
            "approval.approvers_group: must be a Unix account name",
            id="approvers-group-not-a-name",
        ),
        pytest.param(
            {"approval": {"webhook_secret": "short"}},
            "approval.webhook_secret: must be at least 32 characters",
            id="webhook-secret-short",
        ),
        pytest.param(
            {"approval": {"store_url": "postgresql://agent:hunter2@db.example/fleet"}},
            "approval.store_url: must not hold the password: use store_password_file",
            id="store-url-with-password",
        ),
        pytest.param(
            {"approval": {"store_url": "host=db.example password=hunter2 bad"}},
            "approval.store_url: is not a libpq connection string",
            id="store-url-not-libpq",
        ),
        pytest.param(
            {"approval": {"store_password_file": "/etc/host-agent/db-password"}},
            "approval.store_password_file: is only used with store_url",
            id="store-password-without-url",
        ),
        pytest.param({"server": "127.0.0.1"}, "server: must be a table", id="section-not-table"),
        pytest.param(
            {"agents": []},
            "agents: at least one [[agents]] profile is required",
            id="empty-agents",
        ),
        pytest.param(
            {"agents": DROP},
            "agents: at least one [[agents]] profile is required",
            id="no-agents",
        ),
    ],
)
def test_invalid_config_names_file_and_key(overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(document(**overrides), SOURCE)
    error = caught.value
    assert error.source == str(SOURCE)
    assert str(error).startswith(f"{SOURCE}: invalid configuration:\n")
    assert [p for p in error.problems if p.startswith(problem)], error.problems
    assert re.search(rf"^  - {re.escape(problem)}", str(error), re.MULTILINE)


def test_exec_binaries_and_recursive_keys_load() -> None:
    config = parse_config(
        document(
            agents=[agent(allow_recursive=True)],
            exec={
                "enabled": True,
                "allowed_commands": ["/usr/bin/du", "/usr/bin/uptime"],
                "argument_patterns": {"/usr/bin/du": ["-s", "/srv/[a-z]+"]},
                "playbook_dir": "playbooks",
                "allowed_playbooks": ["site.yml"],
            },
            binaries={"systemctl": "/bin/systemctl"},
        ),
        SOURCE,
    )
    assert config.agents[0].allow_recursive
    assert config.exec.argument_patterns == {Path("/usr/bin/du"): ("-s", "/srv/[a-z]+")}
    assert config.exec.playbook_dir == Path("/etc/host-agent/playbooks")
    assert config.exec.ansible_inventory == "localhost,"
    assert config.binaries.systemctl == Path("/bin/systemctl")
    assert config.binaries.zfs == Path("/usr/sbin/zfs")


def test_every_problem_is_reported_at_once() -> None:
    doc = document(
        server={"bind": "nowhere"},
        approval={"enabled": 1, "token_entropy_bits": 64},
        rules=[{"operation": "zfs-nuke"}],
        stray=True,
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(doc, SOURCE)
    keys = [problem.partition(":")[0] for problem in caught.value.problems]
    assert sorted(keys) == sorted(
        [
            "server.bind",
            "approval.enabled",
            "approval.token_entropy_bits",
            "rules[0].operation",
            "stray",
        ]
    )


def test_caller_document_is_not_modified() -> None:
    doc = document(agent=[agent()], agents=DROP)
    before = copy.deepcopy(doc)
    parse_config(doc, SOURCE)
    assert doc == before


# --- host-agent check-config --------------------------------------------------


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, AS_SHIPPED)
    assert main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{path}: OK (2 agent profile(s), 2 rule(s))\n"
    assert err == ""


@pytest.mark.parametrize(
    ("agent_pattern", "warned"),
    [
        pytest.param("admin-*", True, id="same-pattern"),
        pytest.param("*", True, id="everyone"),
        pytest.param("a*", True, id="wider"),
        pytest.param("admin-ops-1", True, id="one-admin-cn"),
        pytest.param("librarian*", False, id="apart"),
    ],
)
def test_an_agent_pattern_the_admin_pattern_can_match_is_warned_about(
    tmp_path: Path, agent_pattern: str, warned: bool
) -> None:
    text = PREDECESSOR_CONFIG.replace(
        'cn_pattern = "claude-code*"', f'cn_pattern = "{agent_pattern}"'
    )
    config = load_config(write(tmp_path, text))
    overlaps = [w for w in config.warnings if "admin_cn_pattern" in w]
    assert len(overlaps) == warned
    if warned:
        assert f"cn_pattern {agent_pattern!r}" in overlaps[0] and "approve" in overlaps[0]


PEOPLE = """
[[approval.people]]
name = "ops-a"
signal = ["+15555550001"]
admin_cn = ["admin-ops-a"]
login = ["opsa"]

[[approval.people]]
name = "ops-b"
signal = ["+15555550002"]
"""


def test_people_map_every_identity_to_one_person(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, PREDECESSOR_CONFIG + PEOPLE))
    approval = config.approval
    assert [person.name for person in approval.people] == ["ops-a", "ops-b"]
    for identity in ("signal:+15555550001", "admin:admin-ops-a", "pam:opsa"):
        assert approval.person_of(identity) == "person:ops-a"
    assert approval.person_of("signal:+15555550002") == "person:ops-b"
    assert approval.person_of("admin:admin-1") == "admin:admin-1"  # unlisted: itself


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        pytest.param(
            lambda text: text.replace('signal = ["+15555550002"]', 'signal = ["+15555550001"]'),
            "signal:+15555550001 is already 'ops-a''s: one person each",
            id="shared-phone",
        ),
        pytest.param(
            lambda text: text.replace('name = "ops-b"', 'name = "ops-a"'),
            "'ops-a' is listed twice",
            id="same-name",
        ),
        pytest.param(
            lambda text: text.replace('login = ["opsa"]', 'login = ["ops a"]'),
            "login: 'ops a'",
            id="bad-login",
        ),
        pytest.param(
            lambda text: text.replace('admin_cn = ["admin-ops-a"]', 'admin_cns = ["x"]'),
            "admin_cns: unknown key",
            id="unknown-key",
        ),
    ],
)
def test_people_that_do_not_add_up_are_refused(tmp_path: Path, change: Any, problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(write(tmp_path, change(PREDECESSOR_CONFIG + PEOPLE)))
    assert problem in str(refused.value)


def test_audit_rotation_the_agent_does_not_apply_is_warned_about(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, PREDECESSOR_CONFIG))  # hourly, 30 days
    rotation, retention = config.warnings[:2]
    assert (
        rotation.startswith("audit.rotation = 'hourly' is not applied") and "logrotate" in rotation
    )
    assert retention.startswith("audit.retention_days = 30 is not applied")
    assert load_config(write(tmp_path, AS_SHIPPED)).warnings == ()


@pytest.mark.parametrize(
    ("change", "warning"),
    [
        pytest.param(
            lambda text: text.replace('admin_cn_pattern = "admin-*"\n', "").replace(
                'signal_webhook = "https://signal.example.com/webhook"\n', ""
            ),
            "no channel can decide an approval",
            id="nobody-can-decide",
        ),
        pytest.param(
            lambda text: text.replace('bridge_cn = "bridge"\n', ""),
            "no reply can come back",
            id="replies-cannot-arrive",
        ),
    ],
)
def test_approval_channels_that_cannot_work_are_warned_about(
    tmp_path: Path, change: Any, warning: str
) -> None:
    config = load_config(write(tmp_path, change(AS_SHIPPED)))
    assert [w for w in config.warnings if warning in w]
    disabled = change(AS_SHIPPED).replace(
        "enabled = true\nttl_seconds", "enabled = false\nttl_seconds"
    )
    assert load_config(write(tmp_path, disabled)).warnings == ()


def test_check_config_prints_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = AS_SHIPPED.replace("[exec]\n", '[exec]\nansible_job_queue = "/var/jobs"\n')
    path = write(tmp_path, text)
    assert main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "OK" in out
    assert err.startswith("warning: exec.ansible_job_queue: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            PREDECESSOR_CONFIG.replace('"0.0.0.0:18443"', '"0.0.0.0"'),
            "  - server.bind: must be HOST:PORT",
            id="invalid",
        ),
        pytest.param("[server\nbind = 1\n", "  - not valid TOML: ", id="not-toml"),
        pytest.param(
            "\n".join(line for line in PREDECESSOR_CONFIG.splitlines() if "log_path" not in line),
            "  - audit.log_path: is required",
            id="missing-key",
        ),
    ],
)
def test_check_config_refuses_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    path = write(tmp_path, text)
    assert main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"host-agent: {path}: ")
    assert message in err


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.toml"
    assert main(["check-config", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"host-agent: {path}: invalid configuration:")


def test_rate_limit_classes_load_with_defaults_for_the_rest() -> None:
    config = parse_config(
        document(rate_limit={"mutating": {"requests": 10, "per_seconds": 30}, "max_tracked": 500}),
        SOURCE,
    )
    limits = config.rate_limit
    assert (limits.mutating.requests, limits.mutating.per_seconds) == (10, 30)
    assert (limits.read.requests, limits.read.per_seconds) == (600, 60)
    assert (limits.approval.requests, limits.max_tracked) == (120, 500)


def test_a_store_url_never_echoes_a_password_back() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            document(approval={"store_url": "host=db.example password=hunter2 bad"}), SOURCE
        )
    assert "hunter2" not in str(caught.value)


def test_a_person_is_known_on_signal_by_number_and_uuid() -> None:
    uuid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    person = {"name": "ops-a", "signal": ["+15555550001", uuid]}
    config = parse_config(document(approval={"people": [person]}), SOURCE)
    assert config.approval.person_of(f"signal:{uuid}") == "person:ops-a"
    with pytest.raises(ConfigError) as refused:
        parse_config(document(approval={"people": [{**person, "signal": ["ops"]}]}), SOURCE)
    assert any("must be an E.164 number or a Signal UUID" in p for p in refused.value.problems)
