"""The TLS posture of a running agent, from real handshakes and an sslyze scan.

Only TLS 1.2 and 1.3, only forward-secret AEAD suites (host_agent.tls sets
`ECDHE+AESGCM:ECDHE+CHACHA20` for TLS 1.2; the server key is ECDSA), no compression, no
client-initiated renegotiation, and no HTTP answer at all without a client certificate
of our CA. Python's OpenSSL 3 (the agent's own) has no RC4, 3DES, DES, EXPORT, SEED or
IDEA suites at all, which is checked instead of a handshake; sslyze's legacy OpenSSL
offers every suite it knows, on every protocol version, and its scan must find nothing
but the strong ones. scripts/test.sh installs sslyze in a virtualenv of its own
(it pins an older cryptography) and names it in $HOST_AGENT_SSLYZE.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import ssl
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from host_agent import certs
from host_agent.config import Config
from host_agent.tls import TLS12_CIPHERS, server_context
from tests.resilience.conftest import Figures
from tests.support import (
    Pki,
    RunningAgent,
    client_context,
    config_text,
    running_agent,
    session,
    write_config,
)

# IANA names (sslyze's) of the suites the posture allows.
STRONG_TLS13 = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
STRONG_TLS12 = {
    f"TLS_ECDHE_{key}_WITH_{cipher}"
    for key in ("ECDSA", "RSA")
    for cipher in ("AES_128_GCM_SHA256", "AES_256_GCM_SHA384", "CHACHA20_POLY1305_SHA256")
}
# OpenSSL names of the TLS 1.2 suites this server (ECDSA key) must accept, one by one.
SERVED_TLS12 = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
]
# Families a client may offer over TLS 1.2 (weak, or just not on the server's list, like
# CCM): the server must refuse each.
WEAK_FAMILIES = {
    "rc4": "RC4",
    "3des": "3DES",
    "des": "DES",
    "export": "EXPORT",
    "seed": "SEED",
    "idea": "IDEA",
    "null": "eNULL",
    "anonymous": "aNULL",
    "static-rsa": "kRSA",
    "dhe": "kDHE",
    "cbc-sha1": "ECDHE+SHA1",
    "cbc-sha2": "ECDHE+AES+SHA256:ECDHE+AES+SHA384",
    "camellia": "CAMELLIA",
    "aria": "ARIA",
    "ccm": "AESCCM",
    "md5": "MD5",
}
# Renegotiation has a test, and an agent, of its own (see there).
SSLYZE_SCANS = ["--sslv2", "--sslv3", "--tlsv1", "--tlsv1_1", "--tlsv1_2", "--tlsv1_3"]
SSLYZE_SCANS += ["--compression", "--fallback", "--heartbleed", "--robot", "--openssl_ccs"]
SSLYZE_SCANS += ["--mozilla_config=disable"]
PROTOCOL_SCANS = {
    "SSL 2.0": "ssl_2_0_cipher_suites",
    "SSL 3.0": "ssl_3_0_cipher_suites",
    "TLS 1.0": "tls_1_0_cipher_suites",
    "TLS 1.1": "tls_1_1_cipher_suites",
    "TLS 1.2": "tls_1_2_cipher_suites",
    "TLS 1.3": "tls_1_3_cipher_suites",
}


@pytest.fixture(scope="module")
def agent(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    workdir = tmp_path_factory.mktemp("posture")
    with running_agent(posture_config(pki, workdir)) as running:
        yield running


def posture_config(pki: Pki, workdir: Path) -> Config:
    return write_config(workdir / "agent.toml", config_text(pki, workdir))


def no_http_answer(port: int, context: ssl.SSLContext) -> bool:
    """The handshake fails, or the connection ends before one byte of HTTP."""
    try:
        return not session(port, context).answer.startswith(b"HTTP/")
    except (ssl.SSLError, OSError):
        return True


def refused_by_the_server(port: int, context: ssl.SSLContext) -> None:
    with pytest.raises(ssl.SSLError) as refused:
        session(port, context)
    # Not our client giving up before it offered anything: the server said no.
    assert refused.value.reason not in ("NO_PROTOCOLS_AVAILABLE", "NO_CIPHERS_AVAILABLE")


def client(pki: Pki, cn: str = "librarian-1") -> ssl.SSLContext:
    return client_context(pki.ca, *pki.client(cn))


def legacy_client(pki: Pki, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that offers only `version`, with anything its OpenSSL still has."""
    context = client(pki)
    context.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        # Offering TLS 1.0/1.1 is the point of this client; Python rightly warns about it.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = context.maximum_version = version
    return context


# --- protocols -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "version",
    [
        pytest.param(ssl.TLSVersion.TLSv1, id="tls1.0"),
        pytest.param(ssl.TLSVersion.TLSv1_1, id="tls1.1"),
    ],
)
def test_tls_1_0_and_1_1_are_refused(
    agent: RunningAgent, pki: Pki, version: ssl.TLSVersion
) -> None:
    refused_by_the_server(agent.port, legacy_client(pki, version))


@pytest.mark.parametrize(
    ("version", "name"),
    [
        pytest.param(ssl.TLSVersion.TLSv1_2, "TLSv1.2", id="tls1.2"),
        pytest.param(ssl.TLSVersion.TLSv1_3, "TLSv1.3", id="tls1.3"),
    ],
)
def test_tls_1_2_and_1_3_are_served_without_compression(
    agent: RunningAgent, pki: Pki, version: ssl.TLSVersion, name: str
) -> None:
    served = session(agent.port, legacy_client(pki, version))
    assert served.version == name
    assert served.answer.startswith(b"HTTP/1.1 200")
    assert served.compression is None


# --- cipher suites -------------------------------------------------------------------


def tls12_client(pki: Pki, ciphers: str) -> ssl.SSLContext:
    context = legacy_client(pki, ssl.TLSVersion.TLSv1_2)
    context.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    return context


def built_without(ciphers: str) -> bool:
    """Whether this OpenSSL, the agent's own (it runs in this process), has no such suite
    at all: then no context, the server's included, can ever negotiate one."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(f"{ciphers}:@SECLEVEL=0")
    except ssl.SSLError:
        return True
    return False


@pytest.mark.parametrize("cipher", SERVED_TLS12)
def test_each_strong_tls12_suite_is_served(agent: RunningAgent, pki: Pki, cipher: str) -> None:
    served = session(agent.port, tls12_client(pki, cipher))
    assert (served.version, served.cipher) == ("TLSv1.2", cipher)
    assert served.answer.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("family", [pytest.param(v, id=k) for k, v in WEAK_FAMILIES.items()])
def test_weak_and_unlisted_tls12_suites_are_refused(
    agent: RunningAgent, pki: Pki, family: str
) -> None:
    if built_without(family):
        return  # refused by construction (the sslyze scan confirms it from outside)
    context = tls12_client(pki, family)
    offered = {c["name"] for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"}
    assert offered and not offered & set(SERVED_TLS12)
    refused_by_the_server(agent.port, context)


def test_the_server_context_forbids_compression_and_renegotiation(pki: Pki, tmp_path: Path) -> None:
    config = write_config(tmp_path / "agent.toml", config_text(pki, tmp_path))
    context = server_context(config.server)
    assert context.options & ssl.OP_NO_COMPRESSION and context.options & ssl.OP_NO_RENEGOTIATION
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert TLS12_CIPHERS == "ECDHE+AESGCM:ECDHE+CHACHA20"


# --- client certificates -------------------------------------------------------------


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param("none", id="no-certificate"),
        pytest.param("other-ca", id="other-ca"),
        pytest.param("server", id="our-server-certificate"),
        pytest.param("ca", id="our-ca-certificate"),
    ],
)
def test_without_a_client_certificate_of_our_ca_there_is_no_http_answer(
    agent: RunningAgent, pki: Pki, credentials: str
) -> None:
    pairs = {
        "other-ca": (pki.other_ca / "librarian-1.crt", pki.other_ca / "librarian-1.key"),
        # Ours, but not for client authentication: no clientAuth usage, or a CA.
        "server": (pki.directory / certs.SERVER_CERT, pki.directory / certs.SERVER_KEY),
        "ca": (pki.ca, pki.directory / "ca.key"),
    }
    context = (
        client_context(pki.ca, *pairs[credentials])
        if credentials in pairs
        else client_context(pki.ca)
    )
    assert no_http_answer(agent.port, context)
    assert session(agent.port, client(pki)).answer.startswith(b"HTTP/1.1 200")


# --- the sslyze scan -------------------------------------------------------------------


def sslyze() -> list[str]:
    """How to run sslyze: $HOST_AGENT_SSLYZE, on PATH, or beside this Python."""
    found = os.environ.get("HOST_AGENT_SSLYZE") or shutil.which("sslyze")
    beside = Path(sys.executable).parent / "sslyze"
    if found is None and beside.exists():
        found = str(beside)
    assert found is not None, "sslyze is missing: run scripts/test.sh, or set HOST_AGENT_SSLYZE"
    return [found]


def scan(agent: RunningAgent, *options: str) -> dict[str, Any]:
    done = subprocess.run(
        [*sslyze(), *options, "--json_out=-", f"localhost:{agent.port}{{127.0.0.1}}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout)["server_scan_results"][0]
    return result


def test_sslyze_finds_only_strong_suites_and_no_weakness(
    agent: RunningAgent, pki: Pki, figures: Figures
) -> None:
    cert, key = pki.client("librarian-1")
    result = scan(agent, "--cert", str(cert), "--key", str(key), *SSLYZE_SCANS)
    assert result["scan_status"] == "COMPLETED", result["connectivity_error_trace"]
    outcome = result["scan_result"]
    attempted = [outcome[name] for name in PROTOCOL_SCANS.values()]
    assert all(a["status"] == "COMPLETED" for a in attempted), attempted
    accepted = {}
    for protocol, name in PROTOCOL_SCANS.items():
        suites = outcome[name]["result"]
        accepted[protocol] = {s["cipher_suite"]["name"] for s in suites["accepted_cipher_suites"]}
        figures.add("sslyze: suites accepted by protocol", protocol, len(accepted[protocol]))
        figures.add(
            "sslyze: suites refused by protocol", protocol, len(suites["rejected_cipher_suites"])
        )
        for suite in accepted[protocol]:
            figures.add("sslyze: accepted suites", f"{protocol} {suite}")
    assert not any(accepted[p] for p in ("SSL 2.0", "SSL 3.0", "TLS 1.0", "TLS 1.1"))
    assert accepted["TLS 1.2"] and accepted["TLS 1.2"] <= STRONG_TLS12
    assert accepted["TLS 1.3"] and accepted["TLS 1.3"] <= STRONG_TLS13
    refused = {
        suite["cipher_suite"]["name"]
        for name in PROTOCOL_SCANS.values()
        for suite in outcome[name]["result"]["rejected_cipher_suites"]
    }
    for weak in ("RC4", "3DES_EDE", "_DES_", "EXPORT", "NULL", "anon", "_CBC_", "TLS_RSA_WITH"):
        assert any(weak in suite for suite in refused), f"sslyze tried no {weak} suite"
    assert outcome["tls_compression"]["result"]["supports_compression"] is False
    assert outcome["heartbleed"]["result"]["is_vulnerable_to_heartbleed"] is False
    assert outcome["openssl_ccs_injection"]["result"]["is_vulnerable_to_ccs_injection"] is False
    assert outcome["robot"]["result"]["robot_result"].startswith("NOT_VULNERABLE")
    assert outcome["tls_fallback_scsv"]["result"]["supports_fallback_scsv"] is True


def test_client_renegotiation_is_refused_and_leaves_no_unhandled_error(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = pki.client("librarian-1")
    # An agent of its own, stopped and its garbage collected before the logs are read:
    # asyncio reports a failed connection task no one awaited only when it is freed.
    with caplog.at_level(logging.ERROR):
        with running_agent(posture_config(pki, tmp_path)) as agent:
            result = scan(agent, "--cert", str(cert), "--key", str(key), "--reneg")
        gc.collect()
    renegotiation = result["scan_result"]["session_renegotiation"]["result"]
    assert renegotiation["client_renegotiations_success_count"] == 0
    assert renegotiation["is_vulnerable_to_client_renegotiation_dos"] is False
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_sslyze_without_a_client_certificate_cannot_connect(agent: RunningAgent) -> None:
    result = scan(agent, "--tlsv1_2")
    assert result["connectivity_status"] == "ERROR"
    assert result["scan_status"] == "ERROR_NO_CONNECTIVITY"
