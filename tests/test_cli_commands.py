"""`host-agent`'s command table: each command's module is imported only when that
command runs, so the table must name the module that really adds each one."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from host_agent.cli import COMMANDS, _parser


def listed(parser: argparse.ArgumentParser) -> set[str]:
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(commands.choices)


def test_the_table_names_every_command_help_lists() -> None:
    assert listed(_parser()) == set(COMMANDS)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_is_added_by_the_module_the_table_names(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = _parser([name])
    assert listed(parser) <= set(COMMANDS) and name in listed(parser)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args([name, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: host-agent {name}")


# What the agent's server needs and a client command does not.
SERVER_ONLY = ("starlette", "hypercorn", "host_agent.server", "host_agent.audit", "psycopg")


def test_a_client_command_loads_none_of_the_server() -> None:
    script = (
        "import sys\n"
        "from host_agent.cli import main\n"
        "try:\n"
        "    main(['op', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(*sys.modules, file=sys.stderr)\n"
    )
    shown = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, check=True
    )
    loaded = shown.stderr.split()
    assert "host_agent.cli.op" in loaded and "httpx" in loaded
    assert [name for name in loaded if name.startswith(SERVER_ONLY)] == []
