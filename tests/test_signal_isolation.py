"""A Signal bridge that takes seconds to answer stalls only the notifications waiting on
it: the audit log and the approval store never queue behind the network (live agent,
real TLS, the signal-cli-rest-api stand-in answering slowly)."""

from __future__ import annotations

import time

from host_agent.approvals.signal import NETWORK_THREADS
from tests.signal_bridge import SignalBridge
from tests.support import Pki, RunningAgent, client

STALL_SECONDS = 5.0
# More hanging notifications than asyncio's default pool has threads (6 on 2 cores).
NOTIFICATIONS = 10


def test_a_stalled_bridge_never_stalls_other_callers(
    approving_agent: RunningAgent, pki: Pki, bridge: SignalBridge
) -> None:
    assert NOTIFICATIONS > NETWORK_THREADS
    bridge.delay_next(NOTIFICATIONS, STALL_SECONDS)
    started = time.monotonic()
    with client(approving_agent, pki, "librarian-1") as http:
        for index in range(NOTIFICATIONS):
            body = {"kind": "zfs", "resource": f"tank/data@s{index}", "args": ["destroy"]}
            assert http.post("/host/op", json=body).status_code == 202
    dry_run = {"kind": "zfs", "resource": "tank/data", "args": ["snapshot", "new"], "dry_run": True}
    with client(approving_agent, pki, "reader-1") as http:
        reply = http.post("/host/op", json=dry_run)
        listing = http.get("/pending")
    elapsed = time.monotonic() - started
    assert reply.status_code == 200, reply.text
    assert listing.status_code == 200
    # Ten approvals made and audited, a dry run and a listing, while every notification
    # waits on the bridge: none of it waited for the network.
    assert elapsed < STALL_SECONDS / 2
    assert bridge.sent == []
