"""Running the agent: `serve`, `check-config` and `wrappers-config`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from host_agent import wrapper_config
from host_agent.cli.common import EXIT_FAILED, EXIT_OK, Commands
from host_agent.config import load_config
from host_agent.tls import client_crls


def register(commands: Commands) -> None:
    serve = commands.add_parser("serve", help="run the agent")
    serve.add_argument("--config", required=True, type=Path)
    serve.add_argument(
        "--pid-file", type=Path, help="write the process id here while running (without systemd)"
    )
    serve.set_defaults(handler=_serve)

    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("config", type=Path)
    check.set_defaults(handler=_check_config)

    wrappers = commands.add_parser(
        "wrappers-config", help="render the wrappers' root-owned allowlist file from a config"
    )
    wrappers.add_argument("--config", required=True, type=Path)
    wrappers.add_argument(
        "--output", type=Path, help="write here atomically (mode 0644) instead of stdout"
    )
    wrappers.set_defaults(handler=_wrappers_config)


def _serve(options: argparse.Namespace) -> int:
    from host_agent.server import serve  # imported late: only `serve` needs Hypercorn

    serve(options.config, options.pid_file)
    return EXIT_OK


def _check_config(options: argparse.Namespace) -> int:
    config = load_config(options.config)
    if config.server.crl_file is not None and config.server.crl_file.exists():
        # A certificate in the CRL file would be a trust anchor: refuse it here too.
        client_crls(config.server)
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    agents, rules = len(config.agents), len(config.rules)
    print(f"{options.config}: OK ({agents} agent profile(s), {rules} rule(s))")
    return EXIT_OK


def _wrappers_config(options: argparse.Namespace) -> int:
    config = load_config(options.config)
    if options.output is None:
        sys.stdout.write(wrapper_config.render(config))
        return EXIT_OK
    try:
        wrapper_config.write(config, options.output)
    except OSError as exc:
        print(f"host-agent: cannot write {options.output}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {options.output}")
    return EXIT_OK
