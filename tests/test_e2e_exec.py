"""End to end as root: mTLS client → agent → real sudo as an unprivileged account →
the exec wrapper → real allowlisted commands and real `ansible-playbook` runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from host_agent.config import Config
from tests.hostile import HOSTILE_NAMES
from tests.support import Pki, RunningAgent, audit_records, client, running_agent
from tests.system import REPO, System, run

pytestmark = pytest.mark.root

# Installed with the optional extra `host-agent[ansible]` beside this interpreter.
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
needs_ansible = pytest.mark.skipif(
    not ANSIBLE_PLAYBOOK.is_file(),
    reason=f"no {ANSIBLE_PLAYBOOK}: install the extra, pip install 'host-agent[ansible]'",
)
WRITTEN = "written by host-agent exec\n"

PROFILE = """
[[agents]]
cn_pattern = "librarian*"
agent_type = "operator"
unix_user = "librarian"
autonomy = "full"
allowed_operations = ["exec-run"]
"""


@dataclass(frozen=True)
class Layout:
    """Per-test directories, all root-owned 0755 (the wrapper refuses anything looser)."""

    playbooks: Path
    output: Path
    markers: Path
    # A copy of touch owned by the service account: the wrapper must refuse to run it.
    foreign_touch: Path

    @property
    def written(self) -> Path:
        return self.output / "written.txt"

    def marker(self, name: str) -> Path:
        return self.markers / f"marker-{name}"


def _directory(path: Path) -> Path:
    path.mkdir()
    path.chmod(0o755)
    return path


@pytest.fixture
def layout(system: System, tmp_path: Path) -> Layout:
    tmp_path.chmod(0o755)
    playbooks = _directory(tmp_path / "playbooks")
    for source in (REPO / "tests" / "playbooks").glob("*.yml"):
        shutil.copyfile(source, playbooks / source.name)
        (playbooks / source.name).chmod(0o644)
    foreign_touch = _directory(tmp_path / "bin") / "touch"
    shutil.copyfile("/usr/bin/touch", foreign_touch)
    foreign_touch.chmod(0o755)
    shutil.chown(foreign_touch, user=system.user)
    return Layout(
        playbooks, _directory(tmp_path / "output"), _directory(tmp_path / "markers"), foreign_touch
    )


def exec_tables(
    layout: Layout,
    *,
    enabled: bool = True,
    playbook_dir: Path | None = None,
    playbook_approval: bool = False,
) -> str:
    """The [exec] tables. Playbooks run without a human unless `playbook_approval`:
    most tests here are about the run itself; the default is tested on its own."""
    marker = f"{layout.markers}/marker-[a-z]+"
    approval = "" if playbook_approval else "playbooks_require_approval = false"
    return f"""
[exec]
enabled = {"true" if enabled else "false"}
{approval}
allowed_commands = [
    "/usr/bin/id", "/usr/bin/true", "/usr/bin/false", "/usr/bin/touch", "/usr/bin/echo",
    "{layout.foreign_touch}",
]
playbook_dir = "{playbook_dir or layout.playbooks}"
allowed_playbooks = ["write-file.yml", "fail.yml", "missing.yml"]

[exec.argument_patterns]
"/usr/bin/id" = ["-u"]
"/usr/bin/touch" = ["{marker}"]
# The first pattern would match an option but does not start with '-'; the second matches anything.
"/usr/bin/echo" = ["[a-z-]+", ".*"]
"{layout.foreign_touch}" = ["{marker}"]

[binaries]
ansible_playbook = "{ANSIBLE_PLAYBOOK}"
"""


def configured(
    system: System,
    pki: Pki,
    tmp_path: Path,
    layout: Layout,
    name: str = "agent",
    *,
    enabled: bool = True,
    playbook_dir: Path | None = None,
    playbook_approval: bool = False,
) -> Config:
    """An agent config granting exec-run to librarian-1; the wrappers' file rendered from it."""
    return system.agent_config(
        pki,
        tmp_path,
        name=name,
        audit_log=tmp_path / f"{name}.jsonl",
        profiles=PROFILE,
        extra=exec_tables(
            layout,
            enabled=enabled,
            playbook_dir=playbook_dir,
            playbook_approval=playbook_approval,
        ),
    )


@pytest.fixture
def exec_config(system: System, pki: Pki, tmp_path: Path, layout: Layout) -> Config:
    return configured(system, pki, tmp_path, layout)


@pytest.fixture
def live(exec_config: Config) -> Iterator[RunningAgent]:
    with running_agent(exec_config) as agent:
        yield agent


def post(live: RunningAgent, pki: Pki, resource: str, *args: str) -> dict[str, Any]:
    with client(live, pki, "librarian-1") as http:
        reply = http.post(
            "/host/op", json={"kind": "exec", "resource": resource, "args": ["run", *args]}
        )
    return {"status": reply.status_code, **reply.json()}


def wrapper(system: System, *argv: str) -> subprocess.CompletedProcess[str]:
    """The installed wrapper called directly, through sudo, as the service account."""
    path = str(system.wrappers.directory / "host-agent-exec")
    return run("sudo", "-n", path, *argv, user=system.user, check=False)


# --- commands through the agent ----------------------------------------------------


def test_command_output_is_returned_and_audited(
    live: RunningAgent, pki: Pki, exec_config: Config
) -> None:
    reply = post(live, pki, "/usr/bin/id", "-u")
    assert reply["status"] == 200, reply
    assert (reply["stdout"], reply["exit_code"]) == ("0\n", 0)
    assert reply["data"] == {"command": "/usr/bin/id"}
    decision, result = audit_records(exec_config.audit.log_path)
    assert (decision["event"], decision["decision"], decision["operation"]) == (
        "decision",
        "allow",
        "exec-run",
    )
    assert decision["argv"][-4:] == ["run", "command", "/usr/bin/id", "-u"]
    assert (result["event"], result["outcome"], result["exit_code"]) == ("result", "ok", 0)


def test_command_without_arguments_runs(live: RunningAgent, pki: Pki) -> None:
    reply = post(live, pki, "/usr/bin/true")
    assert reply["status"] == 200, reply
    assert (reply["stdout"], reply["stderr"], reply["exit_code"]) == ("", "", 0)


def test_argument_reaches_the_command(live: RunningAgent, pki: Pki, layout: Layout) -> None:
    """The baseline for every 'nothing ran' check below: an allowed touch does create it."""
    reply = post(live, pki, "/usr/bin/touch", str(layout.marker("made")))
    assert reply["status"] == 200, reply
    assert layout.marker("made").is_file()


def test_arguments_reach_the_command_as_they_are(live: RunningAgent, pki: Pki) -> None:
    reply = post(live, pki, "/usr/bin/echo", "hello", "$(id);`id`|x>y")
    assert reply["status"] == 200, reply
    assert reply["stdout"] == "hello $(id);`id`|x>y\n"


def test_command_exiting_non_zero_is_502_with_its_result(
    live: RunningAgent, pki: Pki, exec_config: Config
) -> None:
    reply = post(live, pki, "/usr/bin/false")
    assert reply["status"] == 502, reply
    assert reply["error"]["code"] == "operation_failed"
    assert reply["result"]["exit_code"] == 1
    result = audit_records(exec_config.audit.log_path)[-1]
    assert (result["outcome"], result["code"], result["exit_code"]) == (
        "failed",
        "operation_failed",
        1,
    )


def test_unsafe_command_binary_is_refused_by_the_wrapper(
    live: RunningAgent, pki: Pki, layout: Layout
) -> None:
    reply = post(live, pki, str(layout.foreign_touch), str(layout.marker("foreign")))
    assert reply["status"] == 500, reply
    assert reply["error"]["code"] == "wrapper_misconfigured"
    assert reply["result"]["exit_code"] == 78
    assert not layout.marker("foreign").exists()


@pytest.mark.parametrize(
    "resource",
    [
        pytest.param("/bin/touch", id="merged-usr-alias"),
        pytest.param("/usr/bin/../bin/touch", id="dotdot"),
        pytest.param("//usr/bin/touch", id="double-slash"),
        pytest.param("/usr/bin/touch/", id="trailing-slash"),
        pytest.param("/usr/bin/to", id="prefix"),
        pytest.param("/usr/bin/rm", id="unlisted"),
    ],
)
def test_command_not_allowed_runs_nothing(
    live: RunningAgent, pki: Pki, layout: Layout, exec_config: Config, resource: str
) -> None:
    reply = post(live, pki, resource, str(layout.marker("alias")))
    assert reply["status"] == 400, reply
    assert reply["error"] == {
        "code": "command_not_allowed",
        "field": "resource",
        "message": "resource: not one of [exec] allowed_commands (paths must match exactly)",
    }
    assert not layout.marker("alias").exists()
    assert [r["event"] for r in audit_records(exec_config.audit.log_path)] == ["rejected"]


@pytest.mark.parametrize("value", HOSTILE_NAMES)
def test_hostile_values_change_nothing(
    live: RunningAgent, pki: Pki, layout: Layout, exec_config: Config, value: str
) -> None:
    replies = [
        (post(live, pki, value), "resource"),
        (post(live, pki, "/usr/bin/touch", value), "args[1]"),
        (post(live, pki, f"ansible://{value}"), "resource"),
    ]
    for reply, field in replies:
        assert reply["status"] == 400, reply
        assert reply["error"]["field"] == field
    assert list(layout.markers.iterdir()) == []
    assert list(layout.output.iterdir()) == []
    events = [r["event"] for r in audit_records(exec_config.audit.log_path)]
    assert events == ["rejected"] * 3


def test_disabled_exec_is_403_and_audited_as_rejected(
    system: System, pki: Pki, tmp_path: Path, layout: Layout
) -> None:
    config = configured(system, pki, tmp_path, layout, "disabled", enabled=False)
    with running_agent(config) as agent:
        reply = post(agent, pki, "/usr/bin/touch", str(layout.marker("disabled")))
    assert reply["status"] == 403, reply
    assert reply["error"]["code"] == "adapter_disabled"
    (record,) = audit_records(config.audit.log_path)
    assert (record["event"], record["code"], record["resource"]) == (
        "rejected",
        "adapter_disabled",
        "/usr/bin/touch",
    )
    assert not layout.marker("disabled").exists()


# --- playbooks through the agent ----------------------------------------------------


@pytest.mark.parametrize("check", [(), ("check",)], ids=["run", "check-mode"])
def test_a_playbook_waits_for_a_human_by_default(
    system: System,
    pki: Pki,
    tmp_path: Path,
    layout: Layout,
    check: tuple[str, ...],
) -> None:
    """The predecessor's Ansible path always asked a human; without
    playbooks_require_approval = false so does this one, while commands still run."""
    config = configured(system, pki, tmp_path, layout, playbook_approval=True)
    with running_agent(config) as agent, client(agent, pki, "librarian-1") as http:
        held = http.post(
            "/host/op",
            json={"kind": "exec", "resource": "ansible://write-file.yml", "args": ["run", *check]},
        )
        ran = post(agent, pki, "/usr/bin/true")
    assert (held.status_code, held.json()["status"]) == (202, "pending"), held.text
    assert not layout.written.exists()
    assert ran["status"] == 200, ran
    decided = [r for r in audit_records(config.audit.log_path) if r["event"] == "decision"]
    assert [(r["decision"], r["rule"]) for r in decided] == [
        ("approval_required", "adapter exec"),
        ("allow", "agents[0] (cn_pattern='librarian*').allowed_operations"),
    ]


@needs_ansible
def test_playbook_runs_for_real(live: RunningAgent, pki: Pki, layout: Layout) -> None:
    reply = post(live, pki, "ansible://write-file.yml")
    assert reply["status"] == 200, reply
    assert layout.written.read_text() == WRITTEN
    data = reply["data"]
    assert data["playbook"] == "write-file.yml" and data["check"] is False
    assert data["recap"] == {
        "localhost": {
            "ok": 1,
            "changed": 1,
            "unreachable": 0,
            "failed": 0,
            "skipped": 0,
            "rescued": 0,
            "ignored": 0,
        }
    }
    again = post(live, pki, "ansible://write-file.yml")
    assert again["data"]["recap"]["localhost"]["changed"] == 0


@needs_ansible
def test_playbook_check_mode_changes_nothing(live: RunningAgent, pki: Pki, layout: Layout) -> None:
    reply = post(live, pki, "ansible://write-file.yml", "check")
    assert reply["status"] == 200, reply
    assert reply["data"]["check"] is True
    assert reply["data"]["recap"]["localhost"]["changed"] == 1
    assert not layout.written.exists()


@needs_ansible
def test_failing_playbook_is_502_with_its_output(live: RunningAgent, pki: Pki) -> None:
    reply = post(live, pki, "ansible://fail.yml")
    assert reply["status"] == 502, reply
    assert reply["error"]["code"] == "operation_failed"
    result = reply["result"]
    assert result["exit_code"] == 2
    assert "failing on purpose" in result["stdout"]
    assert "failed=1" in result["stdout"]


def test_listed_playbook_missing_from_the_directory_is_404(live: RunningAgent, pki: Pki) -> None:
    reply = post(live, pki, "ansible://missing.yml")
    assert reply["status"] == 404, reply
    assert reply["error"]["code"] == "not_found"


# --- the wrapper on its own, called directly through sudo --------------------------


def test_wrapper_runs_listed_commands(system: System, exec_config: Config, layout: Layout) -> None:
    """The baseline for the refusals below: the same call with good values does run."""
    done = wrapper(system, "run", "command", "/usr/bin/touch", str(layout.marker("direct")))
    assert done.returncode == 0, done.stderr
    assert layout.marker("direct").is_file()
    done = wrapper(system, "run", "command", "/usr/bin/id", "-u")
    assert (done.returncode, done.stdout) == (0, "0\n")


def test_wrapper_refuses_when_exec_is_disabled_in_its_config(
    system: System, pki: Pki, tmp_path: Path, layout: Layout
) -> None:
    configured(system, pki, tmp_path, layout, "disabled", enabled=False)
    done = wrapper(system, "run", "command", "/usr/bin/touch", str(layout.marker("disabled")))
    assert done.returncode == 77, done.stderr
    assert "exec is disabled" in done.stderr
    assert not layout.marker("disabled").exists()


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/bin/touch", id="merged-usr-alias"),
        pytest.param("/usr/bin/../bin/touch", id="dotdot"),
        pytest.param("//usr/bin/touch", id="double-slash"),
        pytest.param("/usr/bin/touch/", id="trailing-slash"),
        pytest.param("touch", id="relative"),
        pytest.param("/usr/bin/rm", id="unlisted"),
    ],
)
def test_wrapper_refuses_unlisted_paths(
    system: System, exec_config: Config, layout: Layout, path: str
) -> None:
    done = wrapper(system, "run", "command", path, str(layout.marker("alias")))
    assert done.returncode == 77, done.stderr
    assert "is not an exec_command" in done.stderr
    assert not layout.marker("alias").exists()


@pytest.mark.parametrize(
    ("argv", "status"),
    [
        pytest.param(("/usr/bin/id", "-g"), 64, id="pattern-mismatch"),
        pytest.param(("/usr/bin/id", "-u", "-u"), 64, id="more-than-patterns"),
        pytest.param(("/usr/bin/true", "x"), 64, id="no-patterns"),
        pytest.param(("/usr/bin/touch", "-r"), 64, id="option-where-pattern-has-none"),
        pytest.param(("/usr/bin/echo", "-e"), 64, id="option-matching-a-pattern-without-dash"),
    ],
)
def test_wrapper_rechecks_argument_patterns(
    system: System, exec_config: Config, argv: tuple[str, ...], status: int
) -> None:
    done = wrapper(system, "run", "command", *argv)
    assert done.returncode == status, done.stderr
    assert "refused" in done.stderr and done.stdout == ""


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("a b", id="space"),
        pytest.param("a\tb", id="tab"),
        pytest.param("a\nb", id="newline"),
        pytest.param("a\rb", id="carriage-return"),
        pytest.param("tаnk", id="unicode-cyrillic-a"),
        pytest.param("tank\u200b", id="unicode-zero-width"),
        pytest.param("x" * 256, id="overlong"),
    ],
)
def test_wrapper_keeps_text_checks_under_a_pattern_matching_anything(
    system: System, exec_config: Config, value: str
) -> None:
    done = wrapper(system, "run", "command", "/usr/bin/echo", "word", value)
    assert done.returncode == 64, done.stderr
    assert done.stdout == ""
    assert wrapper(system, "run", "command", "/usr/bin/echo", "word", "x" * 255).returncode == 0


# argv cannot carry NUL at all: execve refuses it before any wrapper runs.
ARGV_HOSTILE_NAMES = [case for case in HOSTILE_NAMES if "\x00" not in case.values[0]]


@pytest.mark.parametrize("value", ARGV_HOSTILE_NAMES)
def test_wrapper_rejects_hostile_values_on_its_own(
    system: System, exec_config: Config, layout: Layout, value: str
) -> None:
    for argv, status in (
        (("command", "/usr/bin/touch", value), 64),
        (("command", "/usr/bin/touch", f"{layout.marker('')}{value}"), 64),
        (("command", value), 77),
        (("playbook", value), 64),
        (("playbook", "write-file.yml", value), 64),
    ):
        done = wrapper(system, "run", *argv)
        assert done.returncode == status, (argv, done.stdout, done.stderr)
        assert "refused" in done.stderr
    assert list(layout.markers.iterdir()) == []
    assert list(layout.output.iterdir()) == []


@needs_ansible
def test_wrapper_runs_listed_playbooks(system: System, exec_config: Config, layout: Layout) -> None:
    """The baseline for the playbook refusals below."""
    done = wrapper(system, "run", "playbook", "write-file.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert layout.written.read_text() == WRITTEN


def test_wrapper_refuses_unlisted_playbooks(
    system: System, exec_config: Config, layout: Layout
) -> None:
    shutil.copyfile(layout.playbooks / "write-file.yml", layout.playbooks / "unlisted.yml")
    done = wrapper(system, "run", "playbook", "unlisted.yml")
    assert done.returncode == 77, done.stderr
    assert "is not an exec_playbook" in done.stderr
    assert list(layout.output.iterdir()) == []


def _group_writable_directory(layout: Layout) -> Path:
    layout.playbooks.chmod(0o775)
    return layout.playbooks


def _group_writable_playbook(layout: Layout) -> Path:
    (layout.playbooks / "write-file.yml").chmod(0o664)
    return layout.playbooks


def _playbook_owned_by_someone_else(layout: Layout) -> Path:
    shutil.chown(layout.playbooks / "write-file.yml", user="nobody")
    return layout.playbooks


def _world_writable_parent(layout: Layout) -> Path:
    parent = layout.playbooks.parent / "open"
    parent.mkdir()
    parent.chmod(0o777)
    return Path(shutil.copytree(layout.playbooks, parent / "playbooks"))


def _symlink_to_unsafe_place(layout: Layout) -> Path:
    target = _world_writable_parent(layout)
    link = layout.playbooks.parent / "linked"
    link.symlink_to(target)
    return link


@pytest.mark.parametrize(
    "make_unsafe",
    [
        pytest.param(_group_writable_directory, id="group-writable-directory"),
        pytest.param(_group_writable_playbook, id="group-writable-playbook"),
        pytest.param(_playbook_owned_by_someone_else, id="playbook-not-root-owned"),
        pytest.param(_world_writable_parent, id="world-writable-parent"),
        pytest.param(_symlink_to_unsafe_place, id="symlink-to-unsafe-directory"),
    ],
)
def test_wrapper_refuses_playbooks_others_could_change(
    system: System,
    pki: Pki,
    tmp_path: Path,
    layout: Layout,
    make_unsafe: Callable[[Layout], Path],
) -> None:
    directory = make_unsafe(layout)
    configured(system, pki, tmp_path, layout, playbook_dir=directory)
    done = wrapper(system, "run", "playbook", "write-file.yml")
    assert done.returncode == 78, done.stderr
    assert "must be owned by root and not group/world-writable" in done.stderr
    assert list(layout.output.iterdir()) == []


def test_wrapper_reports_a_listed_playbook_that_is_missing(
    system: System, exec_config: Config
) -> None:
    done = wrapper(system, "run", "playbook", "missing.yml")
    assert done.returncode == 66, done.stderr
