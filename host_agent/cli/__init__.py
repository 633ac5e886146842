"""`host-agent` command line. One-line errors; tracebacks only with --debug."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from host_agent import __version__
from host_agent.cli.common import EXIT_FAILED, EXIT_UNAVAILABLE, EXIT_USAGE
from host_agent.errors import ConfigError, HostAgentError

__all__ = ["EXIT_UNAVAILABLE", "main"]

# Each module adds its command (group) to the parser, in the order `--help` lists them.
# They are imported when the parser is built, not with this package: the root approval
# helper imports host_agent.cli.common and should load none of the commands' code.
COMMANDS = ("serve", "migrate", "certs", "policy", "audit", "approve", "db", "op", "mcp")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if options.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not options.debug:  # a line per HTTP request drowns what the client commands say
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        result: int = options.handler(options)
        return result
    except ConfigError as exc:
        print(f"host-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except HostAgentError as exc:
        if options.debug:
            raise
        print(f"host-agent: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="host-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"host-agent {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"host_agent.cli.{name}").register(commands)
    return parser
