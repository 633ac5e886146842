"""`host-agent certs`: the private CA, client certificates and the CRL."""

from __future__ import annotations

import argparse
from pathlib import Path

from host_agent import certs
from host_agent.cli.common import EXIT_OK, Commands


def register(commands: Commands) -> None:
    cert = commands.add_parser("certs", help="manage the private CA, certificates and CRL")
    cert_commands = cert.add_subparsers(required=True, metavar="ACTION")
    init = cert_commands.add_parser("init", help="create CA, server certificate and empty CRL")
    init.add_argument("dir", type=Path)
    init.add_argument(
        "--name",
        action="append",
        dest="names",
        help="DNS name for the server certificate (repeatable; default localhost)",
    )
    init.add_argument(
        "--ip",
        action="append",
        dest="ips",
        help="IP address for the server certificate (default 127.0.0.1, ::1)",
    )
    init.add_argument("--force", action="store_true", help="overwrite existing files")
    init.set_defaults(handler=_init)
    client = cert_commands.add_parser("client", help="issue a client certificate for CN")
    client.add_argument("dir", type=Path)
    client.add_argument("cn")
    client.add_argument("--days", type=int, default=365)
    client.add_argument("--force", action="store_true", help="overwrite existing files")
    client.set_defaults(handler=_client)
    revoke = cert_commands.add_parser("revoke", help="revoke CN's certificate, rewrite the CRL")
    revoke.add_argument("dir", type=Path)
    revoke.add_argument("cn")
    revoke.set_defaults(handler=_revoke)
    crl = cert_commands.add_parser(
        "crl", help="re-sign the CRL with a new next update (daily, before it expires)"
    )
    crl.add_argument("dir", type=Path)
    crl.add_argument(
        "--days",
        type=int,
        default=30,
        help=f"valid for this many days ({certs.MIN_CRL_DAYS}-{certs.MAX_CRL_DAYS}; default 30)",
    )
    crl.add_argument(
        "--create",
        action="store_true",
        help="make an empty CRL if DIR has none (a CA made elsewhere, e.g. by the predecessor)",
    )
    crl.set_defaults(handler=_crl)


def _init(options: argparse.Namespace) -> int:
    certs.init_ca(
        options.dir,
        names=options.names or ["localhost"],
        ips=options.ips or ["127.0.0.1", "::1"],
        force=options.force,
    )
    print(
        f"{options.dir}: wrote {certs.CA_CERT}, {certs.CA_KEY}, {certs.SERVER_CERT}, "
        f"{certs.SERVER_KEY}, {certs.CRL}"
    )
    return EXIT_OK


def _client(options: argparse.Namespace) -> int:
    cert_path, key_path = certs.issue_client(
        options.dir, options.cn, validity=certs.Validity.days(options.days), force=options.force
    )
    print(f"wrote {cert_path} and {key_path}")
    return EXIT_OK


def _revoke(options: argparse.Namespace) -> int:
    serial = certs.revoke(options.dir, options.cn)
    print(f"revoked {options.cn} (serial {serial:x}); rewrote {options.dir / certs.CRL}")
    return EXIT_OK


def _crl(options: argparse.Namespace) -> int:
    crl = certs.refresh_crl(options.dir, days=options.days, create=options.create)
    print(
        f"rewrote {options.dir / certs.CRL}: {len(crl)} revoked certificate(s), "
        f"next update {crl.next_update_utc:%Y-%m-%dT%H:%M:%SZ}; reload the agent to use it"
    )
    return EXIT_OK
