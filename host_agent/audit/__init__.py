"""The tamper-evident audit log: its chain, its writer, and its verifier."""

from host_agent.audit.chain import GENESIS, canonical, record_hash
from host_agent.audit.log import AuditLog
from host_agent.audit.verify import VerifyResult, verify

__all__ = ["GENESIS", "AuditLog", "VerifyResult", "canonical", "record_hash", "verify"]
