from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from host_agent.config import Config
from tests.support import Pki, RunningAgent, config_text, make_pki, running_agent, write_config


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
