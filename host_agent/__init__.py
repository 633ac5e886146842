"""host-agent: privileged host operations for automated callers, safely."""

__version__ = "0.1.0"
