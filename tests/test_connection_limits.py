"""The listener's own bookkeeping: caps sized to the descriptor limit, and an accept()
that runs out of descriptors logging once per interval, not once per attempt."""

from __future__ import annotations

import errno
import logging
import resource

import pytest

from host_agent.config import ConnectionLimits
from host_agent.tls_server import _AcceptBackoff, effective_limits


def test_max_connections_is_held_to_half_the_descriptor_limit() -> None:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limits = effective_limits(ConnectionLimits(max_connections=soft * 4, max_handshakes=soft * 4))
    assert limits.max_connections == soft // 2
    assert limits.max_handshakes == soft // 2
    small = ConnectionLimits(max_connections=8, max_handshakes=4)
    assert effective_limits(small) == small


def test_accept_failures_back_off_and_log_one_line_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backoff = _AcceptBackoff()
    failure = OSError(errno.EMFILE, "Too many open files")
    with caplog.at_level(logging.ERROR, logger="host_agent.tls_server"):
        delays = [backoff.failed(failure) for _ in range(1000)]
    assert len(caplog.records) == 1
    assert "Too many open files" in caplog.records[0].getMessage()
    assert delays[0] == 0.05 and max(delays) == 1.0
    backoff.succeeded()
    assert backoff.failed(failure) == 0.05
