"""`host-agent certs`: the private CA, client certificates and the CRL."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from host_agent import certs
from host_agent.cert_index import INDEX
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
    client.add_argument(
        "--force", action="store_true", help="replace CN's certificate, revoking the old one"
    )
    client.set_defaults(handler=_client)
    revoke = cert_commands.add_parser(
        "revoke", help="revoke every certificate ever issued to CN, rewrite the CRL"
    )
    revoke.add_argument("dir", type=Path)
    revoke.add_argument("cn")
    revoke.set_defaults(handler=_revoke)
    listing = cert_commands.add_parser(
        "list", help="every client certificate issued, from the index"
    )
    listing.add_argument("dir", type=Path)
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=_list)
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
        f"{certs.SERVER_KEY}, {certs.CRL}, {INDEX}"
    )
    return EXIT_OK


def _client(options: argparse.Namespace) -> int:
    replaced = certs.certificate_at(options.dir / f"{options.cn}.crt") if options.force else None
    rebuilding = _index_missing(options.dir)
    cert_path, key_path = certs.issue_client(
        options.dir, options.cn, validity=certs.Validity.days(options.days), force=options.force
    )
    print(f"wrote {cert_path} and {key_path}")
    if replaced is not None:
        print(
            f"revoked the certificate it replaces (serial {replaced.serial_number:x}); "
            "reload the agent"
        )
    _say_if_rebuilt(options.dir, rebuilding)
    return EXIT_OK


def _index_missing(directory: Path) -> bool:
    return (directory / certs.CA_CERT).exists() and not (directory / INDEX).exists()


def _say_if_rebuilt(directory: Path, rebuilding: bool) -> None:
    if rebuilding:
        print(
            f"note: {directory} had no {INDEX}: rebuilt it from the <CN>.crt files and the "
            "CRL (see `certs list`)"
        )


def _revoke(options: argparse.Namespace) -> int:
    rebuilding = _index_missing(options.dir)
    serials = certs.revoke(options.dir, options.cn)
    print(
        f"revoked {len(serials)} certificate(s) of {options.cn} "
        f"(serial {', '.join(format(s, 'x') for s in serials)}); "
        f"rewrote {options.dir / certs.CRL}; reload the agent"
    )
    _say_if_rebuilt(options.dir, rebuilding)
    return EXIT_OK


def _list(options: argparse.Namespace) -> int:
    index = certs.list_certificates(options.dir)
    rows = [issued.public() for issued in index.certificates]
    if options.json:
        print(json.dumps({"recovered": index.recovered, "certificates": rows}, indent=1))
        return EXIT_OK
    if index.recovered:
        print(
            f"note: {options.dir / INDEX} does not exist yet; this list is rebuilt from the "
            "<CN>.crt files and the CRL (the next `certs client` or `certs revoke` saves it)",
            file=sys.stderr,
        )
    columns = ("serial", "cn", "issued_at", "not_after", "revoked_at")
    table = [columns, *(tuple(str(row[c] or "-") for c in columns) for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    for row in table:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return EXIT_OK


def _crl(options: argparse.Namespace) -> int:
    crl = certs.refresh_crl(options.dir, days=options.days, create=options.create)
    print(
        f"rewrote {options.dir / certs.CRL}: {len(crl)} revoked certificate(s), "
        f"next update {crl.next_update_utc:%Y-%m-%dT%H:%M:%SZ}; reload the agent to use it"
    )
    return EXIT_OK
