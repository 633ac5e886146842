"""The server's mutual-TLS context: TLS 1.2+, client certificate required, CRL enforced."""

from __future__ import annotations

import ssl
from pathlib import Path

from host_agent.config import ServerConfig
from host_agent.errors import HostAgentError

# Forward-secret AEAD suites only for TLS 1.2; TLS 1.3 suites are all strong.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class TLSSetupError(HostAgentError):
    """The TLS material could not be loaded; the server must not start."""

    code = "tls_setup_failed"


def server_context(server: ServerConfig) -> ssl.SSLContext:
    """Build the listening context from config; raise `TLSSetupError` naming the bad file."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_ciphers(TLS12_CIPHERS)
    context.set_alpn_protocols(["h2", "http/1.1"])
    for path in (server.cert, server.key):
        if not path.exists():
            raise TLSSetupError(f"TLS certificate/key: {path} does not exist")
    _load(server.cert, "certificate/key", context.load_cert_chain, server.cert, server.key)
    _load(server.client_ca, "client CA", context.load_verify_locations, cafile=server.client_ca)
    if server.crl_file is not None:
        _load(server.crl_file, "CRL", context.load_verify_locations, cafile=server.crl_file)
        # Only the leaf is checked: the CA is ours and has no issuer CRL of its own.
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


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
