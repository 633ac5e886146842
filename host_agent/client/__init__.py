"""Python client for host-agent: sync and async, over mutual TLS.

from host_agent.client import Client, PendingApproval

with Client() as agent:  # settings from HOST_AGENT_* or ~/.config/host-agent/client.toml
    outcome = agent.run("zfs", "tank/media@old", ["destroy"], reason="free space")
    if isinstance(outcome, PendingApproval):
        outcome = outcome.wait(timeout=600)  # a human approves; it is then resubmitted
"""

from host_agent.client.async_client import AsyncClient, AsyncPendingApproval
from host_agent.client.config import ClientConfig
from host_agent.client.errors import (
    ApprovalConsumed,
    ApprovalDenied,
    ApprovalExpired,
    BadResponse,
    CertificateRejected,
    ClientConfigError,
    ClientError,
    Conflict,
    InvalidRequest,
    NotFound,
    OperationFailed,
    OperationTimedOut,
    RateLimited,
    Refused,
    StillPending,
    TransportError,
    TransportTimeout,
    Unavailable,
)
from host_agent.client.request import OpRequest
from host_agent.client.results import (
    ApprovalState,
    ApprovalStatus,
    ApprovalTicket,
    Asked,
    Decision,
    DryRun,
    Health,
    OperationResult,
)
from host_agent.client.sync_client import Client, PendingApproval

__all__ = [
    "ApprovalConsumed",
    "ApprovalDenied",
    "ApprovalExpired",
    "ApprovalState",
    "ApprovalStatus",
    "ApprovalTicket",
    "Asked",
    "AsyncClient",
    "AsyncPendingApproval",
    "BadResponse",
    "CertificateRejected",
    "Client",
    "ClientConfig",
    "ClientConfigError",
    "ClientError",
    "Conflict",
    "Decision",
    "DryRun",
    "Health",
    "InvalidRequest",
    "NotFound",
    "OpRequest",
    "OperationFailed",
    "OperationResult",
    "OperationTimedOut",
    "PendingApproval",
    "RateLimited",
    "Refused",
    "StillPending",
    "TransportError",
    "TransportTimeout",
    "Unavailable",
]
