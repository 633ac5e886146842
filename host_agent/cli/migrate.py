"""`host-agent migrate FILE`: what a clash-host-agent config does differently here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from host_agent.cli.common import EXIT_FAILED, EXIT_OK, Commands
from host_agent.config import parse_config, read_document
from host_agent.migrate import Impact, render, review


def register(commands: Commands) -> None:
    migrate = commands.add_parser(
        "migrate",
        help="list what a clash-host-agent config would protect less, and every other change",
    )
    migrate.add_argument("config", type=Path)
    migrate.set_defaults(handler=_migrate)


def _migrate(options: argparse.Namespace) -> int:
    """Exit 1 when something the predecessor held or refused would now run."""
    raw = read_document(options.config)
    findings = review(parse_config(raw, options.config), raw)
    sys.stdout.write(render(findings))
    loosened = any(f.impact is Impact.LOOSENS for f in findings)
    return EXIT_FAILED if loosened else EXIT_OK
