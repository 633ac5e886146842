"""What every command module shares: exit statuses scripts can tell apart, and the
type of the sub-command table each module registers itself in."""

from __future__ import annotations

import argparse
from typing import TypeAlias

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
# `host-agent op`: how a request the agent answered ended, when it did not run.
EXIT_REFUSED, EXIT_DENIED, EXIT_EXPIRED, EXIT_PENDING = 4, 5, 6, 7

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
