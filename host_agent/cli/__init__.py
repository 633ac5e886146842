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

# The module (host_agent.cli.NAME) that adds each command, in the order `--help` lists
# them. Modules are imported when the parser is built, not with this package: the root
# approval helper imports host_agent.cli.common and should load none of the commands.
COMMANDS = {
    "serve": "serve",
    "check-config": "serve",
    "wrappers-config": "serve",
    "migrate": "migrate",
    "certs": "certs",
    "policy": "policy",
    "audit": "audit",
    "approve": "approve",
    "db": "db",
    "op": "op",
    "mcp": "mcp",
}


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    options = _parser(words).parse_args(words)
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


def _parser(words: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser for `words`: with only the command they name, whose module's imports
    are most of a command's start-up (`host-agent op` has no use for the server's); with
    every command when they name none (`--help`, a typo), to list them all."""
    parser = argparse.ArgumentParser(prog="host-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"host-agent {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    # Options before the command take no value, so its name is the first other word.
    named = next((word for word in words if not word.startswith("-")), "")
    modules = [COMMANDS[named]] if named in COMMANDS else dict.fromkeys(COMMANDS.values())
    for module in modules:
        importlib.import_module(f"host_agent.cli.{module}").register(commands)
    return parser
