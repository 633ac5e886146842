"""Request parsing as a whole: raw bytes through every parser a request body meets.

`parse_everything` gives one body to each: the `/host/op` envelope and its adapter, the
predecessor's `/zfs/*` translations, the `/approve` verdict and the `/webhook/signal`
formats. Only the project's typed refusals may escape; anything else is a crash, and an
accepted operation must keep DESIGN.md's invariant 4 (see `check_operation`). It is the
fuzz target of fuzz_request.py and of test_properties.py's bytes properties.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

from host_agent.adapters import Registry, build_registry
from host_agent.app import parse_verdict
from host_agent.approvals.signal import InvalidWebhookBody, parse_webhook
from host_agent.errors import RequestError, ValidationError
from host_agent.legacy import LEGACY_ROUTES
from host_agent.operations import Operation
from host_agent.request import decode_json, parse_host_op
from tests.support import Pki, config_text, write_config
from tests.test_adapters import CONTRACT_CONFIG, VALID_REQUESTS

REPO = Path(__file__).resolve().parents[2]
PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")
# Every code the docs name: a code no document mentions is not a stable one.
DOCUMENTED_CODES = frozenset(
    re.findall(r"`([a-z][a-z0-9_]*)`", "".join(p.read_text() for p in REPO.glob("docs/*.md")))
)

# A valid body for each parser, for a fuzzer to start from.
SEEDS = [
    *(
        json.dumps({"kind": kind, "resource": resource, "args": list(args)}).encode()
        for kind, resource, args in VALID_REQUESTS
    ),
    b'{"kind": "zfs", "args": ["list"], "dry_run": true, "reason": "why"}',
    b'{"dataset": "tank/a", "snapname": "s"}',
    b'{"token": "ABCD-EFGH-JKMN-PQRS", "decision": "deny"}',
    b'{"token": "T", "confirmation_code": "APPROVE", "approver": "+15555550001", '
    b'"timestamp": "2024-01-01T00:00:00Z"}',
    b'{"jsonrpc": "2.0", "method": "receive", "params": {"envelope": {"sourceNumber": '
    b'"+15555550001", "timestamp": 1, "dataMessage": {"message": "APPROVE T"}}}}',
]


def contract_registry(directory: Path) -> Registry:
    """The adapters as tests/test_adapters.py's contract sets them up (git and exec on)."""
    nowhere = Pki(directory / "pki", directory / "other-ca")  # adapters read no certificate
    text = config_text(nowhere, directory, extra=CONTRACT_CONFIG)
    return build_registry(write_config(directory / "agent.toml", text))


def parse_everything(registry: Registry, data: bytes) -> None:
    """`data` as the body of every route that parses one."""
    with contextlib.suppress(InvalidWebhookBody):
        parse_webhook(data)
    try:
        document = decode_json(data)
    except RequestError:
        return
    with contextlib.suppress(ValidationError):
        parse_verdict(document)
    parse_operation(registry, document)
    if isinstance(document, dict):
        for route in LEGACY_ROUTES:
            # As the route does: its translation goes to /host/op as JSON.
            parse_operation(registry, json.loads(json.dumps(route.to_host_op(document))))


def parse_operation(registry: Registry, document: Any) -> Operation | None:
    """A `/host/op` document through the envelope and its adapter; None if refused."""
    try:
        request = parse_host_op(document)
        operation = registry.adapter_for(request.kind).parse(request, "fuzzer")
    except RequestError as exc:
        assert exc.code in DOCUMENTED_CODES, exc.code
        return None
    check_operation(operation)
    return operation


def check_operation(operation: Operation) -> None:
    """Invariant 4: what reaches a wrapper is separate printable-ASCII words, none of them
    an option unless an admin's exec pattern allows it, and no path escape."""
    for value in operation.wrapper_argv:
        assert PRINTABLE_ASCII.fullmatch(value), operation.wrapper_argv
        assert operation.kind == "exec" or not value.startswith("-"), operation.wrapper_argv
    if operation.kind == "git":
        assert ".." not in operation.wrapper_argv[2].split("/"), operation.wrapper_argv
