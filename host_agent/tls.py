"""The server's mutual-TLS context: TLS 1.2+, client certificate required, CRL enforced,
no session resumption."""

from __future__ import annotations

import _ssl
import ctypes
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from host_agent.config import ServerConfig
from host_agent.crl import ClientCrls, CrlRejected, load_client_crls
from host_agent.errors import HostAgentError

# Forward-secret AEAD suites only for TLS 1.2; TLS 1.3 suites are all strong.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"

# OpenSSL's SSL_CTX_ctrl commands for the server-side session cache (ssl.h).
_SET_SESS_CACHE_MODE, _GET_SESS_CACHE_MODE, _SESS_CACHE_OFF = 44, 45, 0


class TLSSetupError(HostAgentError):
    """The TLS material could not be loaded; the server must not start."""

    code = "tls_setup_failed"


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """A listening context and the serials its CRLs revoke (re-checked on every request)."""

    context: ssl.SSLContext
    revoked: frozenset[int]


def server_context(server: ServerConfig) -> ssl.SSLContext:
    """Build the listening context from config; raise `TLSSetupError` naming the bad file."""
    return server_tls(server).context


def server_tls(server: ServerConfig) -> ServerTLS:
    """The context and its revocations, from one reading of the CRL file."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_ciphers(TLS12_CIPHERS)
    context.set_alpn_protocols(["h2", "http/1.1"])
    _no_resumption(context)
    for path in (server.cert, server.key):
        if not path.exists():
            raise TLSSetupError(f"TLS certificate/key: {path} does not exist")
    _load(server.cert, "certificate/key", context.load_cert_chain, server.cert, server.key)
    _load(server.client_ca, "client CA", context.load_verify_locations, cafile=server.client_ca)
    revoked: frozenset[int] = frozenset()
    crls = client_crls(server)
    if server.crl_file is not None and crls is not None:
        _load_crls(context, server.crl_file, crls)
        # Only the leaf is checked: the CA is ours and has no issuer CRL of its own.
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        revoked = crls.revoked
    return ServerTLS(context, revoked)


def client_crls(server: ServerConfig) -> ClientCrls | None:
    """The CRLs of `crl_file` (None without one); `TLSSetupError` unless every block in it
    is a CRL signed by `client_ca` (`check-config` runs this too)."""
    if server.crl_file is None:
        return None
    try:
        return load_client_crls(server.crl_file, server.client_ca)
    except CrlRejected as exc:
        raise TLSSetupError(f"TLS CRL: {exc}") from exc


def _load_crls(context: ssl.SSLContext, crl_file: Path, crls: ClientCrls) -> None:
    """Python's ssl loads CRLs only from a file; this one holds the checked CRLs and nothing
    else, so no certificate in the operator's file can become a trust anchor."""
    with tempfile.NamedTemporaryFile(prefix="host-agent-crl.", suffix=".pem") as checked:
        checked.write(crls.pem())
        checked.flush()
        _load(crl_file, "CRL", context.load_verify_locations, cafile=checked.name)


def _no_resumption(context: ssl.SSLContext) -> None:
    """A resumed session skips certificate verification, so an expired or revoked
    certificate would keep its access: no TLS 1.3 tickets, no TLS 1.2 tickets, and no
    TLS 1.2 session-id cache (Python's ssl has no setting for it: OpenSSL's own call)."""
    context.num_tickets = 0
    context.options |= ssl.OP_NO_TICKET
    library = ctypes.CDLL(_ssl.__file__)  # resolves to the libssl this _ssl is linked to
    library.SSL_CTX_ctrl.restype = ctypes.c_long
    library.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    library.SSL_CTX_get_options.restype = ctypes.c_uint64
    library.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
    # CPython's SSLContext object is PyObject_HEAD followed by its SSL_CTX pointer; the
    # options read back through that pointer prove it is the right one before any write.
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer or library.SSL_CTX_get_options(pointer) != context.options:
        raise TLSSetupError("cannot reach OpenSSL's context to turn the session cache off")
    library.SSL_CTX_ctrl(pointer, _SET_SESS_CACHE_MODE, _SESS_CACHE_OFF, None)
    if library.SSL_CTX_ctrl(pointer, _GET_SESS_CACHE_MODE, 0, None) != _SESS_CACHE_OFF:
        raise TLSSetupError("OpenSSL kept its TLS session cache on")


class ContextHolder:
    """The context new handshakes use; a reload replaces it, open connections keep theirs."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.current = context

    def __call__(self) -> ssl.SSLContext:
        return self.current


def cipher_suite_ids(context: ssl.SSLContext) -> dict[str, int]:
    """OpenSSL cipher name → IANA cipher suite id, for the ASGI TLS extension."""
    return {cipher["name"]: cipher["id"] & 0xFFFF for cipher in context.get_ciphers()}


def _load(path: Path, what: str, loader: object, *args: object, **kwargs: object) -> None:
    try:
        loader(*args, **kwargs)  # type: ignore[operator]
    except FileNotFoundError as exc:
        raise TLSSetupError(f"TLS {what}: {path} does not exist") from exc
    except PermissionError as exc:
        raise TLSSetupError(f"TLS {what}: {path} is not readable by this user") from exc
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise TLSSetupError(f"TLS {what}: cannot load {path}: {exc}") from exc
