"""What the client commands (`op`, `mcp`) share: where the agent is and with which
certificate, and the exit status each way a request can end gets."""

from __future__ import annotations

import argparse
from pathlib import Path

from host_agent.cli.common import (
    EXIT_DENIED,
    EXIT_EXPIRED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PENDING,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from host_agent.client import (
    ApprovalDenied,
    ApprovalExpired,
    CertificateRejected,
    ClientConfig,
    ClientError,
    InvalidRequest,
    RateLimited,
    Refused,
    StillPending,
    TransportError,
    Unavailable,
)

EXIT_STATUSES = (
    (EXIT_OK, "it ran and succeeded (or the dry run was shown)"),
    (EXIT_FAILED, "it ran and failed, or the agent could not run it"),
    (EXIT_USAGE, "the command line, client settings or request are invalid"),
    (EXIT_UNAVAILABLE, "no answer, the agent is unavailable or rate-limits: try later"),
    (EXIT_REFUSED, "refused: policy, the certificate or a wrapper's allowlist"),
    (EXIT_DENIED, "a human denied it"),
    (EXIT_EXPIRED, "the approval expired"),
    (EXIT_PENDING, "it waits for a human (follow it with --follow ID)"),
)

# First match wins: subclasses before the classes they refine.
_ENDINGS: tuple[tuple[type[ClientError], str, int], ...] = (
    (ApprovalDenied, "denied", EXIT_DENIED),
    (ApprovalExpired, "expired", EXIT_EXPIRED),
    (StillPending, "pending", EXIT_PENDING),
    (CertificateRejected, "refused", EXIT_REFUSED),
    (Refused, "refused", EXIT_REFUSED),
    (InvalidRequest, "invalid", EXIT_USAGE),
    (TransportError, "unavailable", EXIT_UNAVAILABLE),
    (Unavailable, "unavailable", EXIT_UNAVAILABLE),
    (RateLimited, "unavailable", EXIT_UNAVAILABLE),
)


def ending(error: ClientError) -> tuple[str, int]:
    """The word and exit status for an error: denied, expired, refused, failed, ..."""
    for kind, word, status in _ENDINGS:
        if isinstance(error, kind):
            return word, status
    return "failed", EXIT_FAILED


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    connection = parser.add_argument_group(
        "connection",
        "each defaults to HOST_AGENT_SERVER, _CERT, _KEY, _CA, _TIMEOUT, "
        "then to the client config file",
    )
    connection.add_argument("--server", metavar="URL", help="the agent, https://HOST[:PORT]")
    connection.add_argument("--cert", type=Path, metavar="FILE", help="client certificate (PEM)")
    connection.add_argument("--key", type=Path, metavar="FILE", help="its private key (PEM)")
    connection.add_argument(
        "--ca", type=Path, metavar="FILE", help="the CA that signed the agent's certificate"
    )
    connection.add_argument("--timeout", type=float, metavar="SECONDS", help="per request")
    connection.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="client config file (default $HOST_AGENT_CLIENT_CONFIG, "
        "else ~/.config/host-agent/client.toml)",
    )


def client_config(options: argparse.Namespace) -> ClientConfig:
    """The settings the connection arguments name; ClientConfigError lists every problem."""
    return ClientConfig.load(
        options.server,
        options.cert,
        options.key,
        options.ca,
        options.timeout,
        config_file=options.config,
    )
