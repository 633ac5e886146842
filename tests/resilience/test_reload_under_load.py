"""SIGHUP with broken configs while clients keep sending, on a real `host-agent serve`:
not one request fails, a broken config never takes effect, and a good one still does."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx

from tests.served import DENY_DESTROY, DESTROY_DRY_RUN, Served, decision, reloads

CLIENTS = 4
ROUNDS = 5
PAUSE = 0.05  # between reloads: let requests run into each
UNLIMITED = "\n[rate_limit.mutating]\nrequests = 1000000\nper_seconds = 1\n"

# Each turns the running config into one the agent must refuse to load.
BROKEN: dict[str, Callable[[str], str]] = {
    "not-toml": lambda text: text + "\n[[rules]\n",
    "truncated": lambda text: text[: len(text) // 2],
    "empty": lambda text: "",
    "wrong-type": lambda text: text.replace("ttl_seconds = 300", 'ttl_seconds = "soon"'),
    "unknown-key": lambda text: text.replace("[audit]\n", "[audit]\nlog_pth = 1\n"),
    "bad-regex": lambda text: text + '[[rules]]\noperation = "zfs-list"\npattern = "(("\n',
    "unknown-operation": lambda text: text + '[[rules]]\noperation = "zfs-explode"\n',
    "restart-only-key": lambda text: text.replace('bind = "127.0.0.1:0"', 'bind = "127.0.0.1:1"'),
    "missing-key-file": lambda text: text.replace("server.key", "missing.key"),
}


def test_sighup_with_broken_configs_under_load_fails_no_request(served: Served) -> None:
    # Clients in tight loops would meet the rate limit, which is not what is tested here.
    original = served.config.read_text() + UNLIMITED
    served.config.write_text(original)
    served.sighup("reloaded")
    seen: Counter[str] = Counter()
    failures: list[str] = []
    sending = threading.Event()
    sending.set()

    def send() -> None:
        try:
            with served.client() as http:
                while sending.is_set():
                    reply = http.post("/host/op", json=DESTROY_DRY_RUN)
                    if reply.status_code != 200:
                        failures.append(f"{reply.status_code} {reply.text}")
                        continue
                    seen[reply.json()["decision"]["effect"]] += 1
        except httpx.HTTPError as exc:  # a dropped connection is a failed request
            failures.append(repr(exc))

    clients = [threading.Thread(target=send) for _ in range(CLIENTS)]
    for client in clients:
        client.start()
    try:
        for _ in range(ROUNDS):
            for name, breaks in BROKEN.items():
                served.config.write_text(breaks(original + DENY_DESTROY))
                served.sighup("reload failed")
                time.sleep(PAUSE)
                assert decision(served) == "approval_required", name  # the old config holds
            served.config.write_text(original + DENY_DESTROY)
            served.sighup("reloaded")
            assert decision(served) == "deny"  # a good config still applies
            served.config.write_text(original)
            served.sighup("reloaded")
            assert decision(served) == "approval_required"
    finally:
        sending.clear()
        for client in clients:
            client.join(60)

    assert failures == []
    assert reloads(served, "failure") == ROUNDS * len(BROKEN)
    assert reloads(served, "success") == ROUNDS * 2 + 1
    answered = sum(seen.values())
    assert answered > ROUNDS * len(BROKEN) and set(seen) <= {"approval_required", "deny"}
    print(
        f"\nSIGHUP under load: {ROUNDS * len(BROKEN)} broken configs ({len(BROKEN)} kinds) and "
        f"{ROUNDS * 2} good ones reloaded while {CLIENTS} clients sent {answered} requests; "
        f"{len(failures)} failed"
    )
