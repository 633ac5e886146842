"""The Signal wire layer, against the signal-cli-rest-api stand-in over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
from typing import Any

import pytest

from host_agent.approvals.signal import (
    MAX_REPLIES,
    MAX_TEXT_LENGTH,
    TOKEN_ALPHABET,
    TOKEN_LENGTH,
    IncomingReply,
    InvalidWebhookBody,
    RetryPolicy,
    SendReceipt,
    SignalError,
    SignalRestNotifier,
    WebhookNotifier,
    parse_command,
    parse_webhook,
    poll,
    sign,
    verify_signature,
)
from tests.signal_bridge import (
    BRIDGE_NUMBER,
    SignalBridge,
    envelope,
    jsonrpc_receive,
    receipt,
    sync_message,
    typing,
)

ALICE = "+15555550001"
BOB = "+15555550002"
TOKEN = "X7K9M2P4Q8R5N6V3"
TEXT = f"host-agent approval on h1\n\nReply APPROVE {TOKEN} to allow it, or DENY {TOKEN}."
WHEN = 1_700_000_000_123


class Sleeps(list[float]):
    """Stands in for asyncio.sleep and remembers how long each back-off was."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def rest(bridge: SignalBridge, sleeps: Sleeps, **options: Any) -> SignalRestNotifier:
    return SignalRestNotifier(bridge.url, BRIDGE_NUMBER, sleep=sleeps, **options)


def send(notifier: SignalRestNotifier | WebhookNotifier, *recipients: str) -> SendReceipt:
    return asyncio.run(notifier.send(TEXT, list(recipients or (ALICE,))))


def failure(notifier: SignalRestNotifier | WebhookNotifier) -> SignalError:
    with pytest.raises(SignalError) as caught:
        send(notifier)
    return caught.value


def assert_secret_free(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text and "APPROVE" not in text and "Bearer" not in text


# --- outgoing: signal-cli-rest-api -------------------------------------------------


def test_send_posts_the_exact_v2_body_and_reads_the_timestamp(
    bridge: SignalBridge, sleeps: Sleeps
) -> None:
    receipt_ = send(rest(bridge, sleeps), ALICE, BOB)

    assert bridge.sent == [{"number": BRIDGE_NUMBER, "recipients": [ALICE, BOB], "message": TEXT}]
    [request] = bridge.recorded("/v2/send")
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    assert request.status == 201
    assert receipt_ == SendReceipt(attempts=1, timestamp_ms=int(request.reply["timestamp"]))
    assert sleeps == []


def test_send_accepts_a_list_of_per_recipient_results(bridge: SignalBridge, sleeps: Sleeps) -> None:
    bridge.array_replies = True
    bridge.unregistered = {BOB}

    assert send(rest(bridge, sleeps), ALICE, BOB) == SendReceipt(attempts=1, timestamp_ms=None)
    assert bridge.recorded("/v2/send")[0].reply[1]["type"] == "UNREGISTERED_FAILURE"


def test_a_result_list_may_carry_the_timestamp(bridge: SignalBridge, sleeps: Sleeps) -> None:
    results = [
        {"recipientAddress": {"number": ALICE}, "type": "NETWORK_FAILURE", "timestamp": 1},
        {"recipientAddress": {"number": BOB}, "timestamp": WHEN},  # no type: not a failure
    ]
    bridge.answer_next(1, 200, results)

    assert send(rest(bridge, sleeps), ALICE, BOB) == SendReceipt(attempts=1, timestamp_ms=WHEN)


def test_send_fails_when_no_recipient_accepted(bridge: SignalBridge, sleeps: Sleeps) -> None:
    bridge.array_replies = True
    bridge.unregistered = {ALICE}

    error = failure(rest(bridge, sleeps))

    assert "no recipient accepted" in str(error)
    assert (error.attempts, len(bridge.sent)) == (1, 1)


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        pytest.param(201, {"id": "1"}, "without a message timestamp", id="no-timestamp"),
        pytest.param(201, {"timestamp": "soon"}, "without a message timestamp", id="bad-timestamp"),
        pytest.param(201, None, "unexpected reply", id="null"),
        pytest.param(201, [], "unexpected reply", id="empty-list"),
        pytest.param(202, {"timestamp": "1"}, "unexpected HTTP 202", id="accepted-only"),
    ],
)
def test_send_rejects_a_success_status_with_the_wrong_reply(
    bridge: SignalBridge, sleeps: Sleeps, status: int, body: Any, reason: str
) -> None:
    bridge.answer_next(1, status, body)

    error = failure(rest(bridge, sleeps))

    assert reason in str(error)
    assert (error.code, error.attempts, error.upstream_status) == ("signal_send_failed", 1, status)
    assert len(bridge.sent) == 1


def test_send_retries_server_errors_with_exponential_backoff(
    bridge: SignalBridge, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    bridge.fail_next(2, status=500)

    with caplog.at_level(logging.WARNING):
        receipt_ = send(rest(bridge, sleeps))

    assert receipt_.attempts == 3
    assert [r.status for r in bridge.recorded("/v2/send")] == [500, 500, 201]
    assert bridge.sent == [{"number": BRIDGE_NUMBER, "recipients": [ALICE], "message": TEXT}] * 3
    assert sleeps == [0.5, 1.0]
    assert "127.0.0.1" in caplog.text and "HTTP 500" in caplog.text
    assert_secret_free(caplog.text)


def test_send_gives_up_after_the_last_attempt_without_revealing_the_text(
    bridge: SignalBridge, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    bridge.fail_next(4, status=503)
    notifier = rest(bridge, sleeps, headers={"Authorization": "Bearer s3cret"})

    with caplog.at_level(logging.DEBUG):
        error = failure(notifier)

    where = bridge.url.removeprefix("http://")
    assert str(error) == f"sending to {where} failed after 4 attempts: HTTP 503"
    assert (error.code, error.status, error.attempts, error.upstream_status) == (
        "signal_send_failed",
        502,
        4,
        503,
    )
    assert sleeps == [0.5, 1.0, 2.0]
    assert len(bridge.sent) == 4
    assert_secret_free(str(error), repr(error), caplog.text)
    assert "s3cret" not in caplog.text + repr(error)


def test_backoff_is_capped_at_max_delay(bridge: SignalBridge, sleeps: Sleeps) -> None:
    bridge.fail_next(6, status=502)
    policy = RetryPolicy(attempts=6, first_delay=1, factor=3, max_delay=5)

    assert failure(rest(bridge, sleeps, retry=policy)).attempts == 6
    assert sleeps == [1, 3, 5, 5, 5]


def test_rate_limit_is_retried(bridge: SignalBridge, sleeps: Sleeps) -> None:
    bridge.fail_next(1, status=429)

    assert send(rest(bridge, sleeps)).attempts == 2


def test_a_refused_send_is_not_retried(bridge: SignalBridge, sleeps: Sleeps) -> None:
    # The real API answers 400 for Signal-side refusals, e.g. an unregistered sender.
    notifier = SignalRestNotifier(bridge.url, "+15555559999", sleep=sleeps)

    error = failure(notifier)

    assert (error.attempts, error.upstream_status) == (1, 400)
    assert "after 1 attempt: HTTP 400" in str(error)
    assert len(bridge.sent) == 1 and sleeps == []


@pytest.mark.parametrize("status", [401, 403, 404, 307])
def test_other_client_errors_and_redirects_are_final(
    bridge: SignalBridge, sleeps: Sleeps, status: int
) -> None:
    bridge.fail_next(1, status=status)

    assert failure(rest(bridge, sleeps)).upstream_status == status
    assert len(bridge.sent) == 1


def test_a_dropped_connection_is_retried(bridge: SignalBridge, sleeps: Sleeps) -> None:
    bridge.drop_next(1)

    assert send(rest(bridge, sleeps)).attempts == 2
    assert [r.status for r in bridge.recorded("/v2/send")] == [None, 201]


def test_dropped_every_time_names_the_connection_failure(
    bridge: SignalBridge, sleeps: Sleeps
) -> None:
    bridge.drop_next(2)

    error = failure(rest(bridge, sleeps, retry=RetryPolicy(attempts=2)))

    assert "after 2 attempts: connection failed" in str(error)
    assert error.upstream_status is None


def test_a_stalled_bridge_times_out_and_is_retried(bridge: SignalBridge, sleeps: Sleeps) -> None:
    bridge.delay_next(1, 3.0)

    assert send(rest(bridge, sleeps, timeout=0.3)).attempts == 2


def test_timing_out_every_time_fails(bridge: SignalBridge, sleeps: Sleeps) -> None:
    bridge.delay_next(2, 3.0)

    error = failure(rest(bridge, sleeps, timeout=0.3, retry=RetryPolicy(attempts=2)))

    assert str(error).endswith("after 2 attempts: timed out")


def test_nothing_listening_is_a_connection_failure(sleeps: Sleeps) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    notifier = SignalRestNotifier(f"http://127.0.0.1:{port}/", BRIDGE_NUMBER, sleep=sleeps)

    error = failure(notifier)

    assert str(error) == (
        f"sending to 127.0.0.1:{port} failed after 4 attempts: "
        "connection failed (ConnectionRefusedError)"
    )


def test_headers_are_passed(bridge: SignalBridge, sleeps: Sleeps) -> None:
    headers = {"Authorization": "Bearer s3cret", "X-Bridge": "one"}

    send(rest(bridge, sleeps, headers=headers))
    send(WebhookNotifier(f"{bridge.url}/webhook", headers=headers, sleep=sleeps))

    for request in bridge.recorded():
        assert request.headers["authorization"] == "Bearer s3cret"
        assert request.headers["x-bridge"] == "one"
        assert request.headers["user-agent"].startswith("host-agent/")


# --- outgoing: generic webhook -------------------------------------------------------


def test_webhook_notifier_posts_message_and_recipients(
    bridge: SignalBridge, sleeps: Sleeps
) -> None:
    notifier = WebhookNotifier(f"{bridge.url}/webhook", sleep=sleeps)

    assert send(notifier, ALICE, BOB) == SendReceipt(attempts=1, timestamp_ms=None)
    assert bridge.webhook_posts == [{"message": TEXT, "recipients": [ALICE, BOB]}]


def test_webhook_notifier_retries_and_gives_up_like_the_rest_one(
    bridge: SignalBridge, sleeps: Sleeps
) -> None:
    bridge.fail_next(1, status=500)
    bridge.fail_next(1, status=404)
    notifier = WebhookNotifier(f"{bridge.url}/webhook?key=hidden", sleep=sleeps)

    error = failure(notifier)

    assert (error.attempts, error.upstream_status) == (2, 404)
    assert "hidden" not in str(error) and "/webhook" not in str(error)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: SignalRestNotifier("ftp://127.0.0.1", BRIDGE_NUMBER), id="scheme"),
        pytest.param(lambda: SignalRestNotifier("http://", BRIDGE_NUMBER), id="no-host"),
        pytest.param(lambda: SignalRestNotifier("http://u:p@h", BRIDGE_NUMBER), id="credentials"),
        pytest.param(lambda: SignalRestNotifier("http://h?x=1", BRIDGE_NUMBER), id="query"),
        pytest.param(lambda: SignalRestNotifier("http://h:99999", BRIDGE_NUMBER), id="port"),
        pytest.param(lambda: SignalRestNotifier("http://h", ""), id="no-number"),
        pytest.param(lambda: WebhookNotifier("http://h/a b"), id="space"),
        pytest.param(lambda: WebhookNotifier("http://h", headers={"X": "a\r\nB: c"}), id="crlf"),
        pytest.param(lambda: WebhookNotifier("http://h", headers={"X Y": "a"}), id="header-name"),
        pytest.param(lambda: WebhookNotifier("http://h", timeout=0), id="timeout"),
        pytest.param(lambda: RetryPolicy(attempts=0), id="attempts"),
        pytest.param(lambda: RetryPolicy(factor=0.5), id="factor"),
    ],
)
def test_bad_settings_are_refused_up_front(make: Any) -> None:
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("recipients", [[], "+15555550001", [""]], ids=["none", "str", "empty"])
def test_recipients_must_be_a_list_of_numbers(
    bridge: SignalBridge, sleeps: Sleeps, recipients: Any
) -> None:
    with pytest.raises(ValueError):
        asyncio.run(rest(bridge, sleeps).send(TEXT, recipients))
    assert bridge.recorded() == []


# --- incoming: webhook bodies --------------------------------------------------------


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


def test_jsonrpc_receive_notification() -> None:
    notification = jsonrpc_receive(envelope(ALICE, f"APPROVE {TOKEN}", WHEN), BRIDGE_NUMBER)

    assert parse_webhook(body(notification)) == [
        IncomingReply(sender=ALICE, text=f"APPROVE {TOKEN}", timestamp_ms=WHEN, source="jsonrpc")
    ]


def test_a_list_of_notifications_skips_receipts_typing_and_textless_messages() -> None:
    notifications = [
        jsonrpc_receive(receipt(ALICE, WHEN), BRIDGE_NUMBER),
        jsonrpc_receive(typing(ALICE, WHEN + 1), BRIDGE_NUMBER),
        jsonrpc_receive(envelope(ALICE, None, WHEN + 2), BRIDGE_NUMBER),  # attachment only
        jsonrpc_receive(envelope(BOB, f"deny {TOKEN}", WHEN + 3), BRIDGE_NUMBER),
        {"envelope": envelope(ALICE, "yes", WHEN + 4), "account": BRIDGE_NUMBER},  # websocket shape
    ]

    assert parse_webhook(body(notifications)) == [
        IncomingReply(BOB, f"deny {TOKEN}", WHEN + 3, "jsonrpc"),
        IncomingReply(ALICE, "yes", WHEN + 4, "jsonrpc"),
    ]


def test_a_group_message_counts_as_its_sender() -> None:
    notification = jsonrpc_receive(envelope(ALICE, "hi", WHEN, group_id="Z3JvdXA="), BRIDGE_NUMBER)

    assert parse_webhook(body(notification)) == [IncomingReply(ALICE, "hi", WHEN, "jsonrpc")]


def test_the_bridges_own_messages_are_not_replies() -> None:
    assert (
        parse_webhook(body(jsonrpc_receive(envelope(BRIDGE_NUMBER, "hi", WHEN), BRIDGE_NUMBER)))
        == []
    )


def test_a_sender_with_a_hidden_number_is_named_by_uuid() -> None:
    hidden = envelope(ALICE, "hi", WHEN)
    hidden["sourceNumber"] = None
    hidden["source"] = "0f5d5a0e-8a5e-4c1b-9a53-2b4f3e7c1d00"

    [reply] = parse_webhook(body(jsonrpc_receive(hidden, BRIDGE_NUMBER)))

    assert reply.sender == "0f5d5a0e-8a5e-4c1b-9a53-2b4f3e7c1d00"


def test_a_sender_reported_by_uuid_only_is_named_by_it() -> None:
    """Newer signal-cli leaves `source` and `sourceNumber` out and keeps `sourceUuid`."""
    hidden = envelope(ALICE, "hi", WHEN)
    del hidden["sourceNumber"], hidden["source"]

    [reply] = parse_webhook(body(jsonrpc_receive(hidden, BRIDGE_NUMBER)))

    assert reply.sender == hidden["sourceUuid"]


def test_note_to_self_from_the_owners_phone_is_the_owners_reply() -> None:
    notification = jsonrpc_receive(sync_message(ALICE, f"APPROVE {TOKEN}", WHEN), ALICE)

    assert parse_webhook(body(notification)) == [
        IncomingReply(ALICE, f"APPROVE {TOKEN}", WHEN, "sync")
    ]


def test_note_to_self_is_recognised_by_uuid_when_the_number_is_absent() -> None:
    transcript = sync_message(ALICE, "hi", WHEN)
    sent = transcript["syncMessage"]["sentMessage"]
    sent["destination"] = sent["destinationNumber"] = None

    assert parse_webhook(body(jsonrpc_receive(transcript, ALICE))) == [
        IncomingReply(ALICE, "hi", WHEN, "sync")
    ]


def group_transcript_naming_the_account() -> dict[str, Any]:
    transcript = sync_message(ALICE, f"APPROVE {TOKEN}", WHEN, group_id="Zw==")
    transcript["syncMessage"]["sentMessage"]["destinationNumber"] = ALICE
    return jsonrpc_receive(transcript, ALICE)


@pytest.mark.parametrize(
    "notification",
    [
        pytest.param(group_transcript_naming_the_account(), id="group-even-if-it-names-us"),
        pytest.param(
            jsonrpc_receive(sync_message(ALICE, f"APPROVE {TOKEN}", WHEN, destination=BOB), ALICE),
            id="owner-to-someone-else",
        ),
        pytest.param(
            jsonrpc_receive(sync_message(ALICE, f"APPROVE {TOKEN}", WHEN, group_id="Zw=="), ALICE),
            id="owner-to-a-group",
        ),
        pytest.param(
            jsonrpc_receive(sync_message(BOB, f"APPROVE {TOKEN}", WHEN), ALICE),
            id="transcript-from-another-account",
        ),
        pytest.param(
            {"envelope": sync_message(ALICE, f"APPROVE {TOKEN}", WHEN)},
            id="account-unknown",
        ),
        pytest.param(
            jsonrpc_receive(sync_message(ALICE, None, WHEN), ALICE),
            id="no-text",
        ),
    ],
)
def test_other_transcripts_are_not_replies(notification: dict[str, Any]) -> None:
    assert parse_webhook(body(notification)) == []


def test_notifications_for_another_account_are_ignored_when_the_account_is_given() -> None:
    notification = jsonrpc_receive(envelope(ALICE, "hi", WHEN), "+15555557777")

    assert parse_webhook(body(notification), account=BRIDGE_NUMBER) == []
    assert parse_webhook(body(notification)) != []


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2023-11-14T22:13:20.123456789Z", WHEN),
        ("2023-11-15T00:13:20.123+02:00", WHEN),
        ("2023-11-14t22:13:20z", WHEN - 123),
    ],
)
def test_the_predecessors_body(stamp: str, expected: int) -> None:
    document = {
        "token": TOKEN.lower(),
        "confirmation_code": "CONFIRM",
        "approver": ALICE,
        "timestamp": stamp,
    }

    [reply] = parse_webhook(body(document))

    assert reply == IncomingReply(ALICE, f"CONFIRM {TOKEN.lower()}", expected, "legacy")
    assert parse_command(reply.text) == ("approve", TOKEN)


LEGACY = {
    "token": TOKEN,
    "confirmation_code": "YES",
    "approver": ALICE,
    "timestamp": "2023-11-14T22:13:20Z",
}
GOOD_ENVELOPE = envelope(ALICE, "hi", WHEN)


def with_envelope(**changes: Any) -> bytes:
    return body(jsonrpc_receive({**GOOD_ENVELOPE, **changes}, BRIDGE_NUMBER))


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{", id="truncated"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(b"[" * 100_000, id="deep-nesting"),
        pytest.param(b"42", id="scalar"),
        pytest.param(b'["x"]', id="list-of-strings"),
        pytest.param(body({"jsonrpc": "2.0", "method": "send", "params": {}}), id="wrong-method"),
        pytest.param(body({"jsonrpc": "1.0", "method": "receive"}), id="wrong-version"),
        pytest.param(body({"jsonrpc": "2.0", "method": "receive"}), id="no-params"),
        pytest.param(body({"jsonrpc": "2.0", "method": "receive", "params": {}}), id="no-envelope"),
        pytest.param(body({"envelope": [], "account": BRIDGE_NUMBER}), id="envelope-list"),
        pytest.param(body({"envelope": GOOD_ENVELOPE, "account": 5}), id="account-number"),
        pytest.param(with_envelope(dataMessage="hi"), id="data-not-object"),
        pytest.param(with_envelope(dataMessage={"message": 7}), id="message-not-string"),
        pytest.param(with_envelope(timestamp="1700000000123"), id="timestamp-string"),
        pytest.param(with_envelope(timestamp=True), id="timestamp-bool"),
        pytest.param(with_envelope(timestamp=-1), id="timestamp-negative"),
        pytest.param(with_envelope(timestamp=2**60), id="timestamp-huge"),
        pytest.param(
            with_envelope(sourceNumber=None, source=None, sourceUuid=None), id="no-sender"
        ),
        pytest.param(with_envelope(sourceNumber="+1 555"), id="sender-space"),
        pytest.param(with_envelope(sourceNumber="+1555\u0665"), id="sender-unicode-digit"),
        pytest.param(with_envelope(sourceNumber="+" + "1" * 64), id="sender-long"),
        pytest.param(with_envelope(syncMessage={"sentMessage": "x"}, dataMessage=None), id="sync"),
        pytest.param(body({**LEGACY, "extra": 1}), id="legacy-unknown-field"),
        pytest.param(
            body({k: v for k, v in LEGACY.items() if k != "approver"}), id="legacy-missing"
        ),
        pytest.param(body({**LEGACY, "token": 5}), id="legacy-token-number"),
        pytest.param(body({**LEGACY, "timestamp": "2023-11-14T22:13:20"}), id="legacy-naive-time"),
        pytest.param(body({**LEGACY, "timestamp": "2023-13-14T22:13:20Z"}), id="legacy-month-13"),
        pytest.param(body({**LEGACY, "timestamp": "yesterday"}), id="legacy-not-a-time"),
        pytest.param(body({**LEGACY, "approver": "alice; drop"}), id="legacy-approver"),
        pytest.param(body({**LEGACY, "token": "A" * 65}), id="legacy-token-long"),
    ],
)
def test_malformed_bodies_are_refused(raw: bytes) -> None:
    with pytest.raises(InvalidWebhookBody) as caught:
        parse_webhook(raw)

    assert (caught.value.status, caught.value.code) == (400, "invalid_webhook_body")


def test_text_length_is_bounded() -> None:
    longest = "x" * MAX_TEXT_LENGTH

    assert parse_webhook(body(jsonrpc_receive(envelope(ALICE, longest, WHEN), BRIDGE_NUMBER)))
    with pytest.raises(InvalidWebhookBody, match="longer than 2000"):
        parse_webhook(body(jsonrpc_receive(envelope(ALICE, longest + "x", WHEN), BRIDGE_NUMBER)))


def test_notifications_per_body_are_bounded() -> None:
    many = [
        jsonrpc_receive(envelope(ALICE, "hi", WHEN + n), BRIDGE_NUMBER) for n in range(MAX_REPLIES)
    ]

    assert len(parse_webhook(body(many))) == MAX_REPLIES
    with pytest.raises(InvalidWebhookBody, match="more than 100"):
        parse_webhook(body([*many, many[0]]))


def test_body_size_is_bounded() -> None:
    padded = jsonrpc_receive(envelope(ALICE, "hi", WHEN), BRIDGE_NUMBER)
    padded["params"]["padding"] = "x" * (1 << 20)

    with pytest.raises(InvalidWebhookBody, match="larger than"):
        parse_webhook(body(padded))


def test_errors_do_not_echo_the_text() -> None:
    with pytest.raises(InvalidWebhookBody) as caught:
        parse_webhook(body(jsonrpc_receive(envelope(ALICE, TOKEN * 200, WHEN), BRIDGE_NUMBER)))

    assert TOKEN not in str(caught.value)


# --- incoming: polling (normal mode) -------------------------------------------------


def test_poll_reads_and_empties_the_bridges_queue(bridge: SignalBridge) -> None:
    bridge.queue_reply(ALICE, f"APPROVE {TOKEN}", WHEN)
    bridge.queue(receipt(BOB, WHEN + 1))
    bridge.queue(sync_message(BRIDGE_NUMBER, f"DENY {TOKEN}", WHEN + 2))

    replies = asyncio.run(
        poll(bridge.url, BRIDGE_NUMBER, headers={"Authorization": "Bearer s3cret"})
    )

    assert replies == [
        IncomingReply(ALICE, f"APPROVE {TOKEN}", WHEN, "poll"),
        IncomingReply(BRIDGE_NUMBER, f"DENY {TOKEN}", WHEN + 2, "sync"),
    ]
    [request] = bridge.recorded()
    assert (request.method, request.path) == ("GET", "/v1/receive/%2B15555550000?max_messages=100")
    assert request.headers["authorization"] == "Bearer s3cret"
    assert asyncio.run(poll(bridge.url, BRIDGE_NUMBER)) == []


def test_poll_takes_at_most_max_messages_per_call(bridge: SignalBridge) -> None:
    for n in range(150):
        bridge.queue_reply(ALICE, "hi", WHEN + n)

    assert len(asyncio.run(poll(bridge.url, BRIDGE_NUMBER))) == 100
    assert len(asyncio.run(poll(bridge.url, BRIDGE_NUMBER))) == 50


@pytest.mark.parametrize(
    ("arrange", "reason"),
    [
        pytest.param(lambda b: b.fail_next(1, 500), "HTTP 500", id="server-error"),
        pytest.param(lambda b: b.drop_next(1), "connection failed", id="dropped"),
        pytest.param(lambda b: b.answer_next(1, 200, {"a": 1}), "unexpected reply", id="object"),
        pytest.param(
            lambda b: b.answer_next(1, 200, [{"envelope": {"dataMessage": {"message": "x"}}}]),
            "unexpected reply",
            id="bad-envelope",
        ),
    ],
)
def test_poll_failures(bridge: SignalBridge, arrange: Any, reason: str) -> None:
    arrange(bridge)

    with pytest.raises(SignalError) as caught:
        asyncio.run(poll(bridge.url, BRIDGE_NUMBER))

    assert caught.value.code == "signal_receive_failed"
    assert reason in str(caught.value)


def test_poll_refuses_bad_arguments(bridge: SignalBridge) -> None:
    for number, timeout in (("", 1.0), (BRIDGE_NUMBER, 0.0)):
        with pytest.raises(ValueError):
            asyncio.run(poll(bridge.url, number, timeout=timeout))
    assert bridge.recorded() == []


def test_poll_for_a_number_the_bridge_does_not_serve(bridge: SignalBridge) -> None:
    with pytest.raises(SignalError, match="HTTP 400") as caught:
        asyncio.run(poll(bridge.url, BOB))

    assert caught.value.upstream_status == 400


# --- the approver's words --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"APPROVE {TOKEN}", ("approve", TOKEN)),
        (f"  deny {TOKEN.lower()} \n", ("deny", TOKEN)),
        (f"Confirm {TOKEN}", ("approve", TOKEN)),
        (f"yes {TOKEN}", ("approve", TOKEN)),
        (f"APPROVE\t{TOKEN}", ("approve", TOKEN)),
        (f"APPROVE\n{TOKEN}", ("approve", TOKEN)),
        ("approve OlIi456789abcdef", ("approve", "0111456789ABCDEF")),
    ],
)
def test_commands_that_are_understood(text: str, expected: tuple[str, str]) -> None:
    assert parse_command(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("APPROVE", id="no-token"),
        pytest.param(TOKEN, id="no-verb"),
        pytest.param("APPROVE a b", id="extra-words"),
        pytest.param(f"APPROVE {TOKEN} now", id="trailing-word"),
        pytest.param(f"please APPROVE {TOKEN}", id="leading-word"),
        pytest.param(f"approve {TOKEN[:15]}", id="15-chars"),
        pytest.param(f"approve {TOKEN}7", id="17-chars"),
        pytest.param(f"DELETE {TOKEN}", id="unknown-verb"),
        pytest.param(f"APPROVE {TOKEN[:15]}U", id="letter-u"),
        pytest.param(f"APPROVE {TOKEN[:8]}-{TOKEN[8:]}", id="hyphen"),
        pytest.param(f"APPROVE-{TOKEN}", id="joined"),
        pytest.param(f"\u0410PPROVE {TOKEN}", id="cyrillic-verb"),
        pytest.param(f"APPROVE {TOKEN[:15]}\u041a", id="cyrillic-token"),
        pytest.param(f"APPROVE {TOKEN[:15]}\uff13", id="fullwidth-digit"),
        pytest.param(f"APPROVE\u00a0{TOKEN}", id="nbsp"),
        pytest.param(f"APPROVE {TOKEN[:8]}\u200b{TOKEN[8:]}", id="zero-width-space"),
        pytest.param(f"APPROVE {TOKEN}\u0000", id="nul"),
    ],
)
def test_everything_else_is_not_a_command(text: str) -> None:
    assert parse_command(text) is None


def test_the_token_alphabet_is_crockford_base32() -> None:
    assert (TOKEN_ALPHABET, TOKEN_LENGTH) == ("0123456789ABCDEFGHJKMNPQRSTVWXYZ", 16)


# --- bridge authentication ----------------------------------------------------------

SECRET = b"bridge-secret"
SIGNED = body(jsonrpc_receive(envelope(ALICE, f"APPROVE {TOKEN}", WHEN), BRIDGE_NUMBER))


def test_signature_round_trip() -> None:
    assert verify_signature(SECRET, SIGNED, sign(SECRET, SIGNED))
    assert verify_signature(
        SECRET, SIGNED, sign(SECRET, SIGNED).upper().replace("SHA256", "sha256")
    )


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param(sign(b"other", SIGNED), id="other-secret"),
        pytest.param(sign(SECRET, SIGNED + b" "), id="other-body"),
        pytest.param(sign(SECRET, SIGNED).replace("sha256=", "sha1="), id="wrong-prefix"),
        pytest.param(sign(SECRET, SIGNED).removeprefix("sha256="), id="no-prefix"),
        pytest.param(sign(SECRET, SIGNED)[:-2], id="truncated"),
        pytest.param(sign(SECRET, SIGNED) + " ", id="trailing-space"),
        pytest.param(sign(SECRET, SIGNED)[:-1] + "\u0661", id="non-ascii"),
    ],
)
def test_bad_signatures_are_refused(header: str | None) -> None:
    assert not verify_signature(SECRET, SIGNED, header)


def test_an_empty_secret_never_verifies() -> None:
    assert not verify_signature(b"", SIGNED, "sha256=" + "0" * 64)
    with pytest.raises(ValueError):
        sign(b"", SIGNED)


def test_the_documented_openssl_command_gives_the_same_signature() -> None:
    digest = subprocess.run(
        ["openssl", "dgst", "-sha256", "-hmac", SECRET.decode(), "-r"],
        input=SIGNED,
        capture_output=True,
        check=True,
    ).stdout.split()[0]

    assert "sha256=" + digest.decode() == sign(SECRET, SIGNED)


THUMBS_UP, THUMBS_DOWN = "\U0001f44d", "\U0001f44e"
SENT = 1_700_000_000_999  # the approvers' message, as /v2/send stamped it


def reacting(emoji: str, *, remove: bool = False, target: object = SENT) -> bytes:
    reaction = envelope(ALICE, None, WHEN)
    reaction["dataMessage"]["reaction"] = {
        "emoji": emoji,
        "targetAuthor": BRIDGE_NUMBER,
        "targetSentTimestamp": target,
        "isRemove": remove,
    }
    return body(jsonrpc_receive(reaction, BRIDGE_NUMBER))


def quoting(text: str) -> bytes:
    reply = envelope(ALICE, text, WHEN)
    reply["dataMessage"]["quote"] = {"id": SENT, "author": BRIDGE_NUMBER, "text": "..."}
    return body(jsonrpc_receive(reply, BRIDGE_NUMBER))


@pytest.mark.parametrize(
    ("sent", "verdict"),
    [
        pytest.param(reacting(THUMBS_UP), "APPROVE", id="thumbs-up"),
        pytest.param(reacting(THUMBS_UP + "\ufe0f"), "APPROVE", id="thumbs-up-emoji-style"),
        pytest.param(reacting(THUMBS_DOWN), "DENY", id="thumbs-down"),
        pytest.param(reacting(THUMBS_UP, target=str(SENT)), "APPROVE", id="target-as-text"),
        pytest.param(quoting("yes"), "APPROVE", id="quote-yes"),
        pytest.param(quoting(" Approve "), "APPROVE", id="quote-approve"),
        pytest.param(quoting("DENY"), "DENY", id="quote-deny"),
        pytest.param(reacting(THUMBS_UP, remove=True), None, id="un-react"),
        pytest.param(reacting("\u2764\ufe0f"), None, id="other-emoji"),
        pytest.param(quoting("looks fine to me"), None, id="quote-remark"),
    ],
)
def test_a_reaction_or_quote_reply_answers_the_message_it_names(
    sent: bytes, verdict: str | None
) -> None:
    replies = parse_webhook(sent, account=BRIDGE_NUMBER)
    if verdict is None:
        assert replies == []
    else:
        assert replies == [IncomingReply(ALICE, verdict, WHEN, "jsonrpc", SENT)]


@pytest.mark.parametrize("target", [None, "soon", -1, True])
def test_a_reaction_naming_no_message_is_a_bad_body(target: object) -> None:
    with pytest.raises(InvalidWebhookBody):
        parse_webhook(reacting(THUMBS_UP, target=target), account=BRIDGE_NUMBER)
