"""`host-agent mcp`: serve the caller's tools to a language model over MCP on stdio."""

from __future__ import annotations

import argparse
import sys

from host_agent.cli.common import EXIT_OK, EXIT_USAGE, Commands
from host_agent.cli.connection import add_connection_arguments, client_config, ending
from host_agent.client import ClientConfigError, ClientError

_MISSING = "host-agent mcp: the mcp package is not installed: pip install 'host-agent[mcp]'"


def register(commands: Commands) -> None:
    mcp = commands.add_parser(
        "mcp",
        help="serve this client's tools to an LLM over the Model Context Protocol (stdio)",
        description="An MCP server on stdin/stdout offering the tools the agent's manifest "
        "lists for this client certificate, plus check_approval. Each setting not given "
        "comes from HOST_AGENT_SERVER, _CERT, _KEY, _CA, then the client config file. "
        "Exit status: 0 the client closed the session; at start, as for `host-agent op`: "
        "2 usage or settings, 3 the agent cannot be reached, 4 it refuses this certificate.",
    )
    add_connection_arguments(mcp)
    mcp.set_defaults(handler=_mcp)


def _mcp(options: argparse.Namespace) -> int:
    try:
        from host_agent import mcp_server  # late: `mcp` is an optional extra
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] not in ("mcp", "mcp_types"):
            raise
        print(_MISSING, file=sys.stderr)
        return EXIT_USAGE
    try:
        config = client_config(options)
        mcp_server.serve(config)
    except ClientConfigError as exc:
        print(f"host-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ClientError as exc:
        word, status = ending(exc)
        print(f"host-agent mcp: {word}: {exc}", file=sys.stderr)
        return status
    return EXIT_OK
