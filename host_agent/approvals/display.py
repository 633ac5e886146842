"""What `host-agent approve` and its root helper print: the agent's words, made inert.

Every string here came from the agent, and through it from a caller (reason,
resource, arguments). Printed raw, an escape sequence could clear the
approver's screen, rewrite what they are about to approve, set their
clipboard (OSC 52) or reorder text (bidi overrides). So every such string
loses its escape sequences and control and format characters before it
reaches a terminal.
"""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from typing import Any

from host_agent.cli.common import EXIT_FAILED, EXIT_OK

# ESC sequences: CSI (ESC [ ... final), string commands (OSC, DCS, SOS, PM, APC) up to
# their terminator or the end, and any other two-character escape.
_ESCAPE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?"
    r"|\x1b[\]PX^_].*?(?:\x07|\x1b\\|\x9c|$)"
    r"|\x1b.?",
    re.DOTALL,
)


def clean(value: object) -> str:
    """`value` as text a terminal shows as it is: no escapes, controls or bidi overrides."""
    text = _ESCAPE.sub("", str(value))
    # Cc: C0, DEL and C1 controls; Cf: format characters (bidi overrides and isolates,
    # zero-width characters); Cs/Co: surrogates and private use, never meant for display.
    return "".join("?" if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co") else c for c in text)


def report(reply: dict[str, Any], *, as_json: bool) -> int:
    """Print the agent's reply for a person; the exit status that goes with it."""
    if as_json:
        # json.dumps escapes every control and non-ASCII character: nothing raw gets out.
        print(json.dumps(reply, indent=2))
    elif not reply["ok"]:
        print(refusal(reply.get("error")), file=sys.stderr)
    elif "approvals" in reply:
        print_open_approvals(reply["approvals"])
    else:
        print(describe_decision(reply["approval"]))
    return EXIT_OK if reply["ok"] else EXIT_FAILED


def refusal(error: object) -> str:
    fields = error if isinstance(error, dict) else {}
    return f"host-agent: refused: {clean(fields.get('message'))} ({clean(fields.get('code'))})"


def describe_decision(approval: dict[str, Any]) -> str:
    what = f"{clean(approval['operation'])} {clean(approval['resource'] or '')}".rstrip()
    subject = (
        f"{clean(approval['approval_id'])} ({what}, requested by {clean(approval['requester'])})"
    )
    status = approval["status"]
    if status == "approved":
        return f"approved {subject}; it may run once before {clean(approval['expires_at'])}"
    if status == "denied":
        return f"denied {subject}"
    count, needed = len(approval["approvers"]), clean(approval["approvals_required"])
    return f"vote recorded for {subject}: {count} of {needed} approvals"


def print_open_approvals(approvals: list[dict[str, Any]]) -> None:
    if not approvals:
        print("no open approvals")
    for approval in approvals:
        print(
            f"{clean(approval['approval_id'])}  {clean(approval['status']):<8}  "
            f"{clean(approval['operation'])} {clean(approval['resource'])}  "
            f"by {clean(approval['requester'])}  until {clean(approval['expires_at'])}"
        )
        if approval.get("host"):
            print(f"    host: {clean(approval['host'])}")
        args = " ".join(clean(arg) for arg in approval["args"])
        print(f"    args: {args or '(none)'}")
        print(f"    reason: {clean(approval['reason']) if approval['reason'] else '(none given)'}")
