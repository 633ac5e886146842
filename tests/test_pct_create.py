"""`pct create`: the adapter's checks, the wrapper's own checks through real sudo as the
service account, and the pct stand-in's exact argv (Proxmox cannot run here)."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from host_agent.adapters.pct import PctAdapter
from host_agent.adapters.pct_create import CREATE_FLAGS, NEVER
from host_agent.config import Config, PctConfig, parse_config
from host_agent.errors import ConfigError, ValidationError
from host_agent.request import HostOpRequest
from tests.support import Pki, audit_records, client, running_agent
from tests.system import REPO, StandIn, System, install_standin, run
from tests.test_config import SOURCE, document

VOLUME = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"
CONFIG = PctConfig(
    allowed_vmids=("1[0-9][0-9]",),
    allowed_ostemplates=("local:vztmpl/debian-12-*.tar.zst", "/var/lib/vz/template/cache/*"),
    allowed_create_flags=("hostname", "memory", "net0", "description"),
)


def create(*args: str, resource: str = "105", config: PctConfig = CONFIG) -> tuple[str, ...]:
    request = HostOpRequest("pct", resource, ("create", *args))
    return PctAdapter(config).parse(request, "librarian").wrapper_argv


def test_a_create_with_allowed_template_and_settings_reaches_the_wrapper_as_given() -> None:
    argv = create(VOLUME, "hostname=web1", "memory=512", "net0=name=eth0,bridge=vmbr0,ip=dhcp")
    assert argv == (
        "create", "105", VOLUME, "hostname=web1", "memory=512",
        "net0=name=eth0,bridge=vmbr0,ip=dhcp",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "resource", "field", "code"),
    [
        pytest.param((VOLUME,), "99", "resource", "vmid_out_of_range", id="vmid-low"),
        pytest.param((VOLUME,), "1000000", "resource", "vmid_out_of_range", id="vmid-high"),
        pytest.param((VOLUME,), "0105", "resource", "invalid_name", id="vmid-leading-zero"),
        pytest.param((VOLUME,), "205", "resource", "vmid_not_allowed", id="vmid-not-listed"),
        pytest.param((), "105", "args[1]", "missing_argument", id="no-template"),
        pytest.param(
            ("local:vztmpl/ubuntu-22.04.tar.zst",),
            "105",
            "args[1]",
            "template_not_allowed",
            id="template-not-listed",
        ),
        pytest.param(
            ("/var/lib/vz/template/cache/../../../../etc/shadow",),
            "105",
            "args[1]",
            "invalid_name",
            id="template-dotdot",
        ),
        pytest.param(("vztmpl/x.tar.zst",), "105", "args[1]", "invalid_name", id="relative"),
        pytest.param(
            (VOLUME, "hostname=web1", "hostname=web2"),
            "105",
            "args[3]",
            "invalid_argument",
            id="twice",
        ),
        pytest.param((VOLUME, "--hostname=web1"), "105", "args[2]", "invalid_argument", id="dash"),
        pytest.param((VOLUME, "memory=lots"), "105", "args[2]", "invalid_argument", id="value"),
        pytest.param((VOLUME, "cores=2"), "105", "args[2]", "setting_not_allowed", id="unlisted"),
        pytest.param(
            (VOLUME, "rootfs=/:/mnt/host"), "105", "args[2]", "setting_not_allowed", id="rootfs"
        ),
        pytest.param(
            (VOLUME, "mp0=/etc,mp=/mnt/etc"), "105", "args[2]", "setting_not_allowed", id="mp0"
        ),
        pytest.param(
            (VOLUME, "unprivileged=0"), "105", "args[2]", "setting_not_allowed", id="privileged"
        ),
        pytest.param(
            (VOLUME, "features=nesting=1"), "105", "args[2]", "setting_not_allowed", id="features"
        ),
        pytest.param(
            (VOLUME, "hookscript=local:snippets/x"),
            "105",
            "args[2]",
            "setting_not_allowed",
            id="hookscript",
        ),
    ],
)
def test_the_adapter_refuses_with_the_field_at_fault(
    args: tuple[str, ...], resource: str, field: str, code: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        create(*args, resource=resource)
    assert (refused.value.field, refused.value.code) == (field, code)


@pytest.mark.parametrize("name", ["rootfs", "mp0", "features", "unprivileged", "lxc", "dev1"])
def test_no_config_may_allow_a_setting_that_reaches_the_host(name: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(document(pct={"allowed_create_flags": [name]}), SOURCE)
    assert any("is never allowed" in p for p in refused.value.problems)


def test_create_needs_a_human_unless_the_config_says_otherwise() -> None:
    def forced(config: PctConfig) -> bool:
        request = HostOpRequest("pct", "105", ("create", VOLUME))
        return PctAdapter(config).parse(request, "librarian").always_requires_approval

    assert forced(CONFIG)
    relaxed = PctConfig(
        allowed_ostemplates=CONFIG.allowed_ostemplates, create_requires_approval=False
    )
    assert not forced(relaxed)


def test_the_wrapper_knows_the_same_settings_and_patterns() -> None:
    """host-agent-pct's FLAG_PATTERNS is CREATE_FLAGS, entry for entry."""
    text = (REPO / "wrappers" / "host-agent-pct").read_text()
    table = text.split("declare -rA FLAG_PATTERNS=(\n", 1)[1].split("\n)\n", 1)[0]
    entries = dict(re.findall(r"^    \[([a-z0-9-]+)\]='([^']*)'$", table, re.MULTILINE))
    assert entries == dict(CREATE_FLAGS)
    assert not set(entries) & set(NEVER)


# --- through the wrapper, as root ------------------------------------------------------

PROFILE = """
[[agents]]
cn_pattern = "librarian*"
agent_type = "librarian"
unix_user = "librarian"
allowed_operations = ["pct-*"]
"""


@pytest.fixture(scope="module")
def pct(system: System) -> StandIn:
    return StandIn(install_standin(system, REPO / "tests" / "standins" / "pct"))


@pytest.fixture(scope="module")
def template_dir() -> Iterator[Path]:
    """A template cache of root's (pct reads the file as root)."""
    directory = Path(tempfile.mkdtemp(prefix="ha-templates-"))
    directory.chmod(0o755)
    (directory / "alpine-3.20.tar.xz").write_bytes(b"template")
    yield directory
    shutil.rmtree(directory)


def pct_config(
    system: System, pki: Pki, tmp_path: Path, pct: StandIn, templates: Path, **keys: str
) -> Config:
    table = {
        "allowed_vmids": '["1[0-9][0-9]"]',
        "allowed_ostemplates": f'["local:vztmpl/debian-12-*.tar.zst", "{templates}/*"]',
        "allowed_create_flags": '["hostname", "memory", "net0"]',
        **keys,
    }
    pct_table = "\n".join(f"{key} = {value}" for key, value in table.items())
    return system.agent_config(
        pki,
        tmp_path,
        profiles=PROFILE,
        extra=f'[pct]\n{pct_table}\n[binaries]\npct = "{pct.path}"\n',
    )


def wrapper(system: System, *argv: str) -> tuple[int, str]:
    path = str(system.wrappers.directory / "host-agent-pct")
    done = run("sudo", "-n", path, *argv, user=system.user, check=False)
    return done.returncode, done.stderr


def test_an_approved_create_reaches_pct_with_exact_argv_and_unprivileged(
    system: System, pki: Pki, tmp_path: Path, pct: StandIn, template_dir: Path
) -> None:
    pct.reset({"node": "pve", "containers": {}})
    config = pct_config(system, pki, tmp_path, pct, template_dir)
    body: dict[str, Any] = {
        "kind": "pct",
        "resource": "105",
        "args": ["create", VOLUME, "hostname=web1", "net0=name=eth0,bridge=vmbr0,ip=dhcp"],
    }
    with running_agent(config) as agent, client(agent, pki, "librarian-1") as http:
        held = http.post("/host/op", json=body)
    assert held.status_code == 202, held.text
    assert pct.calls() == []
    decision = next(r for r in audit_records(config.audit.log_path) if r["event"] == "decision")
    assert decision["rule"] == "adapter pct"
    # What the approved resubmission runs: the wrapper with exactly the agent's argv.
    path = str(system.wrappers.directory / "host-agent-pct")
    sent = decision["argv"][decision["argv"].index(path) + 1 :]
    assert sent == ["create", "105", *body["args"][1:]]
    status, stderr = wrapper(system, *sent)
    assert status == 0, stderr
    assert pct.calls() == [
        [
            "create", "105", VOLUME, "--unprivileged=1", "--hostname=web1",
            "--net0=name=eth0,bridge=vmbr0,ip=dhcp",
        ]
    ]  # fmt: skip
    assert pct.state()["containers"]["105"]["options"]["unprivileged"] == "1"


def test_without_the_approval_setting_a_create_runs_at_once(
    system: System, pki: Pki, tmp_path: Path, pct: StandIn, template_dir: Path
) -> None:
    pct.reset({"node": "pve", "containers": {}})
    template = str(template_dir / "alpine-3.20.tar.xz")
    config = pct_config(system, pki, tmp_path, pct, template_dir, create_requires_approval="false")
    body = {"kind": "pct", "resource": "106", "args": ["create", template, "memory=256"]}
    with running_agent(config) as agent, client(agent, pki, "librarian-1") as http:
        done = http.post("/host/op", json=body)
        again = http.post("/host/op", json=body)
    assert done.status_code == 200, done.text
    assert done.json()["data"] == {"created": 106}
    assert pct.calls()[0] == ["create", "106", template, "--unprivileged=1", "--memory=256"]
    assert (again.status_code, again.json()["error"]["code"]) == (409, "already_exists")


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        pytest.param(("create", "99", VOLUME), 64, "vmid is not valid", id="vmid-low"),
        pytest.param(("create", "205", VOLUME), 77, "not allowed by any pct_vmid", id="vmid"),
        pytest.param(
            ("create", "105", "local:vztmpl/ubuntu.tar.zst"),
            77,
            "not allowed by any pct_os",
            id="template",
        ),
        pytest.param(
            ("create", "105", "{templates}/../../etc/shadow"),
            64,
            "is not STORAGE",
            id="dotdot",
        ),
        pytest.param(("create", "105", VOLUME, "cores=2"), 77, "not a pct_create_flag", id="flag"),
        pytest.param(
            ("create", "105", VOLUME, "rootfs=/:/x"), 77, "not a pct_create_flag", id="rootfs"
        ),
        pytest.param(
            ("create", "105", VOLUME, "memory=1", "memory=2"), 64, "given twice", id="twice"
        ),
        pytest.param(
            ("create", "105", VOLUME, "hostname=-x"), 64, "a value it does not take", id="value"
        ),
        pytest.param(("create", "105", VOLUME, "--memory=1"), 64, "NAME=VALUE", id="option"),
        pytest.param(("create", "105"), 64, "create takes VMID OSTEMPLATE", id="no-template"),
    ],
)
def test_the_wrapper_refuses_forged_creates_on_its_own(
    system: System,
    pki: Pki,
    tmp_path: Path,
    pct: StandIn,
    template_dir: Path,
    argv: tuple[str, ...],
    status: int,
    message: str,
) -> None:
    """Argv the agent would never send, straight to the wrapper through sudo."""
    pct.reset({"node": "pve", "containers": {}})
    pct_config(system, pki, tmp_path, pct, template_dir)
    filled = [part.format(templates=template_dir) for part in argv]
    got, stderr = wrapper(system, *filled)
    assert (got, message in stderr) == (status, True), stderr
    assert pct.calls() == []


def test_the_wrapper_refuses_a_template_someone_else_can_swap(
    system: System, pki: Pki, tmp_path: Path, pct: StandIn
) -> None:
    """A template under a directory the service account owns could be replaced between
    the check and pct reading it as root: refused."""
    pct.reset({"node": "pve", "containers": {}})
    directory = Path(tempfile.mkdtemp(prefix="ha-templates-open-"))
    try:
        directory.chmod(0o755)
        shutil.chown(directory, system.user)
        (directory / "t.tar.xz").write_bytes(b"x")
        pct_config(system, pki, tmp_path, pct, directory)
        got, stderr = wrapper(system, "create", "105", str(directory / "t.tar.xz"))
        assert got == 78, stderr
        assert pct.calls() == []
    finally:
        shutil.rmtree(directory)


def test_the_tool_schema_takes_what_the_adapter_takes() -> None:
    schema = PctAdapter(CONFIG).tool_parameters("create")
    assert schema is not None
    Draft202012Validator.check_schema(schema)
    check = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    good = ["local:vztmpl/debian-12-x.tar.zst", "hostname=web1", "memory=512"]
    assert check.is_valid({"resource": "105", "args": good})
    create(*good)  # and the adapter agrees
    for bad in (
        ["local:vztmpl/ubuntu.tar.zst"],
        [VOLUME, "rootfs=/:/x"],
        [VOLUME, "cores=2"],
        ["/var/lib/vz/template/cache/../x"],
    ):
        assert not check.is_valid({"resource": "105", "args": bad}), bad
    assert PctAdapter(PctConfig()).tool_parameters("create") is None
