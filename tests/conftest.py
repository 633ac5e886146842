from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from host_agent.config import Config
from tests.approval_flow import approvals_config
from tests.postgres import Postgres, postgres_cluster
from tests.served import Served
from tests.signal_bridge import BRIDGE_NUMBER, SignalBridge, running_bridge
from tests.support import (
    Pki,
    RunningAgent,
    config_text,
    make_pki,
    running_agent,
    serve_process,
    write_config,
)
from tests.system import (
    PROBE,
    Pool,
    System,
    installed_system,
    require_root_tools,
    run,
    zfs_pool,
)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def config(pki: Pki, tmp_path: Path) -> Config:
    return write_config(tmp_path / "agent.toml", config_text(pki, tmp_path))


@pytest.fixture
def agent(config: Config) -> Iterator[RunningAgent]:
    with running_agent(config) as running:
        yield running


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """Root only: a real service account, the wrappers and a sudoers drop-in for it."""
    require_root_tools("sudo", "visudo", "runuser")
    with installed_system(tmp_path_factory.mktemp("system"), extra=(PROBE,)) as installed:
        yield installed


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """Root only: a real PostgreSQL cluster on a loopback port, run by its own account."""
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    """Root only: a real zfs-fuse pool with a `data` dataset."""
    require_root_tools("zfs-fuse", "zpool")
    root = tmp_path_factory.mktemp("zpool")
    root.chmod(0o755)
    with zfs_pool(root) as created:
        yield created


@pytest.fixture
def system_config(system: System, pool: Pool, pki: Pki, tmp_path: Path) -> Config:
    """The standard test config wired to the installed wrappers (and their config rendered)."""
    return system.agent_config(pki, tmp_path)


@pytest.fixture
def system_agent(system_config: Config) -> Iterator[RunningAgent]:
    with running_agent(system_config) as agent:
        yield agent


# Full autonomy, every zfs operation without approval, recursive allowed.
OPERATOR = """
[[agents]]
cn_pattern = "admin-*"
agent_type = "operator"
unix_user = "operator"
autonomy = "full"
allowed_operations = ["zfs-*"]
allow_recursive = true
"""


@pytest.fixture
def operator_agent(system: System, pool: Pool, pki: Pki, tmp_path: Path) -> Iterator[RunningAgent]:
    """An agent where admin-1 may run every zfs operation without approval."""
    config = system.agent_config(pki, tmp_path, name="operator", profiles=OPERATOR)
    with running_agent(config) as agent:
        yield agent


@pytest.fixture
def bridge() -> Iterator[SignalBridge]:
    """A loopback signal-cli-rest-api stand-in (see tests/signal_bridge.py)."""
    with running_bridge() as running:
        yield running


@pytest.fixture
def approving_agent(pki: Pki, tmp_path: Path, bridge: SignalBridge) -> Iterator[RunningAgent]:
    """The standard agent with approvals on, tokens going to the Signal stand-in."""
    with running_agent(approvals_config(pki, tmp_path, bridge)) as agent:
        yield agent


@pytest.fixture
def signalling_agent(
    system: System, pool: Pool, pki: Pki, tmp_path: Path, bridge: SignalBridge
) -> Iterator[RunningAgent]:
    """The installed-like agent on the pool, approval tokens going out through the Signal
    stand-in, whose replies it polls every 0.2 s."""
    text = (
        f'signal_url = "{bridge.url}"\n'
        f'signal_number = "{BRIDGE_NUMBER}"\n'
        "poll_interval_seconds = 0.2"
    )
    with running_agent(system.agent_config(pki, tmp_path, approval=text)) as agent:
        yield agent


@pytest.fixture
def snapshot(pool: Pool) -> Iterator[str]:
    """A fresh snapshot of `<pool>/data` for one test (destroyed afterwards if still there)."""
    name = f"{pool.name}/data@approve-{time.monotonic_ns()}"
    run("zfs", "snapshot", name)
    yield name
    run("zfs", "destroy", name, check=False)


@pytest.fixture
def own_pki(pki: Pki, tmp_path: Path) -> Pki:
    """A copy of the session PKI this test may re-issue and revoke in."""
    directory = tmp_path / "pki"
    shutil.copytree(pki.directory, directory)
    return Pki(directory, pki.other_ca)


@pytest.fixture
def served(own_pki: Pki, tmp_path: Path) -> Iterator[Served]:
    config = tmp_path / "agent.toml"
    config.write_text(config_text(own_pki, tmp_path))
    process = serve_process(config)
    try:
        yield Served(process, config, own_pki)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        process.kill()
        process.communicate()
