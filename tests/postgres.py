"""A real PostgreSQL cluster for the tests: Debian's server binaries, a cluster
initialised in a temporary directory, owned and run by an unprivileged account,
listening on a loopback port only, stopped at the end."""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from host_agent.approvals.pg_schema import upgrade
from tests.support import free_port
from tests.system import require_root_tools, run, service_account

# The cluster's superuser, which stands for the operator running `host-agent db upgrade`.
OWNER = "postgres"


def server_binaries() -> Path:
    """Debian's newest installed PostgreSQL (postgresql-NN puts it here)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    assert found, "PostgreSQL is not installed (scripts/test.sh installs Debian's postgresql)"
    return Path(found[-1]).parent


@dataclass(frozen=True)
class Postgres:
    bin: Path
    data: Path
    os_user: str
    port: int
    password: str  # every role the tests create gets this one

    def url(self, role: str = OWNER, database: str = "postgres") -> str:
        return f"postgresql://{role}:{self.password}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run `sql` as the owner; its output (one value a line)."""
        done = run(
            "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql,
            self.url(database=database),
        )  # fmt: skip
        return done.stdout

    def create_database(self, name: str, agent_role: str) -> None:
        """A database for one test's fleet, and a login role for its agents with no
        rights yet (`host-agent db upgrade` grants them)."""
        self.psql(f"CREATE ROLE {agent_role} LOGIN PASSWORD '{self.password}'")
        self.psql(f"CREATE DATABASE {name}")
        self.psql(f"REVOKE ALL ON DATABASE {name} FROM PUBLIC")
        self.psql(f"GRANT CONNECT ON DATABASE {name} TO {agent_role}")
        self.psql("REVOKE CREATE ON SCHEMA public FROM PUBLIC", database=name)

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast")

    def start(self) -> None:
        self._ctl("start", "-w", "-l", str(self.data / "server.log"), "-o", self._options())

    def _options(self) -> str:
        return f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data}"

    def _ctl(self, *argv: str) -> None:
        done = run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), *argv, user=self.os_user, check=False
        )
        assert done.returncode == 0, f"pg_ctl {argv[0]}: {done.stdout}{done.stderr}"


@contextmanager
def postgres_cluster() -> Iterator[Postgres]:
    """The cluster lives in a directory of its own account's under /tmp (pytest's
    temporary directories are root's alone, which the server could not enter)."""
    require_root_tools("runuser", "psql")
    password = secrets.token_hex(16)
    with service_account() as user:
        root = Path(tempfile.mkdtemp(prefix="ha-postgres-"))
        shutil.chown(root, user)
        data = root / "data"
        secret = root / "password"
        secret.write_text(password)
        shutil.chown(secret, user)
        os.chmod(secret, 0o600)
        binaries = server_binaries()
        run(
            str(binaries / "initdb"), "-D", str(data), "-U", OWNER, "--auth=scram-sha-256",
            f"--pwfile={secret}", "--encoding=UTF8", "--locale=C.UTF-8",
            user=user,
        )  # fmt: skip
        secret.unlink()
        cluster = Postgres(binaries, data, user, free_port(), password)
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()
            shutil.rmtree(root)


@dataclass(frozen=True)
class FleetDatabase:
    """One test's approval database, upgraded, and the agents' role to reach it."""

    url: str  # the agents' store_url: no password in it
    password: str
    role: str
    name: str


def fleet_database(cluster: Postgres) -> FleetDatabase:
    """A new database with the host-agent schema, as `host-agent db upgrade` leaves it."""
    name = f"fleet_{secrets.token_hex(4)}"
    role = f"agent_{secrets.token_hex(4)}"
    cluster.create_database(name, role)
    with psycopg.connect(cluster.url(database=name), autocommit=True) as owner:
        upgrade(owner, role)
    url = f"postgresql://{role}@127.0.0.1:{cluster.port}/{name}"
    return FleetDatabase(url, cluster.password, role, name)
