"""The Signal wire layer of approvals: tell the approvers, read what they answer.

Outgoing, a `Notifier` posts the approval text to signal-cli-rest-api
(`SignalRestNotifier`) or to a generic JSON webhook (`WebhookNotifier`),
retrying transient failures. Incoming, `parse_webhook` (pushed bodies) and
`poll` (normal-mode receive) turn signal-cli envelopes, or the predecessor's
webhook body, into `IncomingReply` values; `parse_command` reads the
approver's words. The webhook route authenticates the bridge itself with
`verify_signature`; the approver is whoever the Signal envelope says sent the
text, never a field the requester could choose.

The text sent to approvers carries the approval token, so it is never logged
and never put into an exception: errors name the host, the HTTP status and the
number of attempts only.

Wire format relied on (bbernhard/signal-cli-rest-api, src/api/api.go and
src/client/*.go; envelope fields from AsamK/signal-cli's Json* records):

- `POST /v2/send` takes `{"number", "recipients", "message"}` and answers 201
  `{"timestamp": "<ms as a string>"}`. Signal-side failures come back as 400
  `{"error"}` (not retried) and rate limits as 429 (retried). Lists of
  per-recipient results (signal-cli's SendMessageResult: `recipientAddress`,
  `type` "SUCCESS" or a failure name, sometimes `timestamp`) are accepted too:
  delivered when at least one recipient succeeded.
- Normal mode: `GET /v1/receive/{number}[?max_messages=N]` runs `signal-cli
  receive` and answers a JSON array of `{"envelope", "account"}`; each message
  is handed out once.
- json-rpc mode: `RECEIVE_WEBHOOK_URL` gets every daemon line as-is,
  `{"jsonrpc": "2.0", "method": "receive", "params": {"envelope", "account"}}`,
  with no way to add headers (hence a signing relay, see the operator docs).
- An envelope has `sourceNumber` (null when the number is hidden; `source` is
  the legacy identifier, number or UUID), `sourceUuid`, `timestamp` (ms) and
  one payload: `dataMessage` (`message` is null for attachments, reactions,
  stickers), `syncMessage`, `receiptMessage`, `typingMessage`, `editMessage`,
  `callMessage`, `storyMessage`. `syncMessage.sentMessage` is a transcript of
  a message that another device of the *account itself* sent, with
  `destination`, `destinationNumber`, `destinationUuid` (null for a group,
  then `groupInfo`) and the data message's fields unwrapped beside them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import hmac
import http.client
import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any, Protocol

from host_agent import __version__, strict_json
from host_agent.approvals.tokens import TOKEN_ALPHABET, TOKEN_LENGTH, normalize
from host_agent.config import ApprovalConfig
from host_agent.errors import HostAgentError

__all__ = [
    "MAX_REPLIES",
    "MAX_TEXT_LENGTH",
    "SIGNATURE_HEADER",
    "TOKEN_ALPHABET",
    "TOKEN_LENGTH",
    "IncomingReply",
    "InvalidWebhookBody",
    "Notifier",
    "RetryPolicy",
    "SendReceipt",
    "SignalError",
    "SignalRestNotifier",
    "WebhookNotifier",
    "parse_command",
    "parse_webhook",
    "poll",
    "sign",
    "verify_signature",
]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Host-Agent-Signature"
MAX_TEXT_LENGTH = 2000
MAX_REPLIES = 100  # notifications in one webhook body
MAX_WEBHOOK_BYTES = 1 << 20
MAX_POLL_MESSAGES = 100  # asked of signal-cli per receive
MAX_POLL_ITEMS = 1000  # for servers too old to honour max_messages
MAX_POLL_BYTES = 8 << 20
_MAX_SEND_REPLY_BYTES = 64 << 10
_MAX_TIMESTAMP = 1 << 53  # ms; beyond what JSON numbers carry exactly


class SignalError(HostAgentError):
    """Signal could not be reached, or answered wrongly. The message names host,
    status and attempts only, never the text (it carries the token)."""

    status = 502
    code = "signal_send_failed"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        attempts: int = 0,
        upstream_status: int | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.attempts = attempts
        self.upstream_status = upstream_status


class InvalidWebhookBody(SignalError):
    """A pushed body is not a reply format this agent accepts."""

    status = 400
    code = "invalid_webhook_body"

    def __init__(self, reason: str) -> None:
        super().__init__(f"webhook body: {reason}")
        self.reason = reason


# --- outgoing -------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how patiently, a send is retried after a transient failure."""

    attempts: int = 4
    first_delay: float = 0.5
    factor: float = 2.0
    max_delay: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.first_delay < 0 or self.factor < 1 or self.max_delay < 0:
            raise ValueError("RetryPolicy needs attempts >= 1, delays >= 0 and factor >= 1")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1 is the second attempt)."""
        return min(self.first_delay * self.factor ** (retry - 1), self.max_delay)


DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class SendReceipt:
    attempts: int
    timestamp_ms: int | None  # the server's message timestamp, when it reports one


class Notifier(Protocol):
    async def send(self, text: str, recipients: Sequence[str]) -> SendReceipt: ...


Sleep = Callable[[float], Awaitable[None]]


class SignalRestNotifier:
    """Sends through signal-cli-rest-api: `POST {base_url}/v2/send` from `number`."""

    def __init__(
        self,
        base_url: str,
        number: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not number:
            raise ValueError("the sending number is required")
        self.number = number
        url = _base_url(base_url) + "/v2/send"
        self._endpoint = _Endpoint(url, headers, timeout, retry, sleep)

    async def send(self, text: str, recipients: Sequence[str]) -> SendReceipt:
        document = {"number": self.number, "recipients": _recipients(recipients), "message": text}
        return await self._endpoint.post(document, _signal_timestamp)


class WebhookNotifier:
    """Posts `{"message", "recipients"}` to a generic JSON webhook (the predecessor's
    format); any 2xx answer is delivery."""

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._endpoint = _Endpoint(_check_url(url), headers, timeout, retry, sleep)

    async def send(self, text: str, recipients: Sequence[str]) -> SendReceipt:
        document = {"message": text, "recipients": _recipients(recipients)}
        return await self._endpoint.post(document, lambda status, body: None)


class _Unacceptable(Exception):
    """A 2xx answer that still does not confirm delivery (final, not retried)."""


class _Endpoint:
    """One URL that JSON is POSTed to, with the retry policy around it."""

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str] | None,
        timeout: float,
        retry: RetryPolicy,
        sleep: Sleep,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.url = url
        self.where = _where(url)
        self.headers = {"Content-Type": "application/json", **_headers(headers)}
        self.timeout = timeout
        self.retry = retry
        self.sleep = sleep

    async def post(
        self, document: object, accept: Callable[[int, bytes], int | None]
    ) -> SendReceipt:
        data = json.dumps(document).encode()
        attempt = 0
        while True:
            attempt += 1
            reply = await _off_loop(
                _exchange, "POST", self.url, data, self.headers, self.timeout, _MAX_SEND_REPLY_BYTES
            )
            if reply.status is not None and 200 <= reply.status < 300:
                try:
                    return SendReceipt(attempt, accept(reply.status, reply.body))
                except _Unacceptable as exc:
                    raise self._failed(attempt, reply.status, str(exc)) from None
            failure = reply.failure or f"HTTP {reply.status}"
            if not _transient(reply.status) or attempt >= self.retry.attempts:
                raise self._failed(attempt, reply.status, failure)
            delay = self.retry.delay(attempt)
            log.warning(
                "sending to %s: attempt %d of %d failed (%s), retrying in %.1fs",
                self.where,
                attempt,
                self.retry.attempts,
                failure,
                delay,
            )
            await self.sleep(delay)

    def _failed(self, attempts: int, status: int | None, failure: str) -> SignalError:
        plural = "" if attempts == 1 else "s"
        return SignalError(
            f"sending to {self.where} failed after {attempts} attempt{plural}: {failure}",
            attempts=attempts,
            upstream_status=status,
        )


def _transient(status: int | None) -> bool:
    """No answer, a server error or a rate limit may pass; any other refusal will not."""
    return status is None or status >= 500 or status == 429


def _signal_timestamp(status: int, body: bytes) -> int | None:
    if status not in (200, 201):
        raise _Unacceptable(f"unexpected HTTP {status}")
    try:
        document = strict_json.loads(body)
    except strict_json.NotJson:
        raise _Unacceptable(f"HTTP {status} with a reply that is not JSON") from None
    if isinstance(document, dict):
        timestamp = _timestamp_value(document.get("timestamp"))
        if timestamp is None:
            raise _Unacceptable(f"HTTP {status} without a message timestamp")
        return timestamp
    if isinstance(document, list) and document and all(isinstance(r, dict) for r in document):
        delivered = [result for result in document if result.get("type", "SUCCESS") == "SUCCESS"]
        if not delivered:
            raise _Unacceptable(f"HTTP {status} but no recipient accepted the message")
        stamps = (_timestamp_value(result.get("timestamp")) for result in delivered)
        return next((stamp for stamp in stamps if stamp is not None), None)
    raise _Unacceptable(f"HTTP {status} with an unexpected reply")


def _timestamp_value(value: object) -> int | None:
    """signal-cli-rest-api sends timestamps as decimal strings; signal-cli as numbers."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 16:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_TIMESTAMP:
        return value
    return None


def _recipients(recipients: Sequence[str]) -> list[str]:
    if isinstance(recipients, str) or not recipients:
        raise ValueError("recipients must be a non-empty list of numbers")
    if not all(isinstance(r, str) and r for r in recipients):
        raise ValueError("every recipient must be a non-empty string")
    return list(recipients)


Notify = Callable[[str, Sequence[str]], Awaitable[object]]


def notifier(config: ApprovalConfig) -> Notify | None:
    """signal-cli-rest-api when configured, else the predecessor's generic JSON webhook."""
    if config.signal_url is not None and config.signal_number is not None:
        return SignalRestNotifier(config.signal_url, config.signal_number).send
    if config.signal_webhook is not None:
        return WebhookNotifier(config.signal_webhook).send
    return None


# --- HTTP (standard library only) -----------------------------------------------


@dataclass(frozen=True)
class _Reply:
    status: int | None  # None: no HTTP answer at all
    body: bytes = b""
    failure: str = ""  # why there was no answer


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is reported as the failure it is: the token never follows one."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> None:
        return None


# Blocking exchanges with the bridge run on threads of their own, never on asyncio's
# default pool: that pool also runs the audit log's fsyncs and the approval store's
# queries, and a bridge that takes seconds to answer must not make every caller wait.
# Bounded: past it, further exchanges queue here, still away from the audit log.
NETWORK_THREADS = 4
_NETWORK = concurrent.futures.ThreadPoolExecutor(
    max_workers=NETWORK_THREADS, thread_name_prefix="host-agent-signal"
)


async def _off_loop(exchange: Callable[..., _Reply], *args: Any) -> _Reply:
    return await asyncio.get_running_loop().run_in_executor(_NETWORK, exchange, *args)


# Proxy variables from the environment are ignored: the bridge is a local
# service, and the text must not take a detour nobody configured here.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def _exchange(
    method: str,
    url: str,
    data: bytes | None,
    headers: Mapping[str, str],
    timeout: float,
    limit: int,
) -> _Reply:
    """One blocking exchange (run in a thread). Network trouble is returned, not raised;
    the body is read up to `limit` + 1 bytes so the caller can tell it was cut."""
    # Every URL here passed _check_url: http or https only.
    request = urllib.request.Request(url, data=data, headers=dict(headers), method=method)  # noqa: S310
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return _Reply(response.status, response.read(limit + 1))
    except urllib.error.HTTPError as exc:
        exc.close()  # the error body is never used: it may quote what was sent
        return _Reply(exc.code)
    except (OSError, http.client.HTTPException) as exc:
        return _Reply(None, failure=_describe(exc))


def _describe(exc: BaseException) -> str:
    reason: object = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return "timed out"
    name = type(reason).__name__ if isinstance(reason, BaseException) else "URLError"
    return f"connection failed ({name})"


_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _check_url(url: str) -> str:
    """An http(s) URL with a host; credentials belong in `headers`, not in the URL."""
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        raise ValueError("Signal URL has an invalid port") from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or _URL_FORBIDDEN.search(url)
    ):
        raise ValueError("Signal URL must be http:// or https://, with a host and no credentials")
    return url


def _base_url(url: str) -> str:
    parts = urllib.parse.urlsplit(_check_url(url))
    if parts.query or parts.fragment:
        raise ValueError("a Signal base URL takes no query or fragment")
    return url.rstrip("/")


def _where(url: str) -> str:
    """What errors may say about a URL: host and port, never path or query (secrets live there)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def _headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    checked = {"Accept": "application/json", "User-Agent": f"host-agent/{__version__}"}
    for name, value in (headers or {}).items():
        # The value is a secret (a bearer token): only the name may appear in the error.
        if not _HEADER_NAME.fullmatch(name) or any(c in value for c in "\r\n\0"):
            raise ValueError(f"invalid HTTP header {name!r}")
        checked[name] = value
    return checked


# --- incoming -------------------------------------------------------------------


@dataclass(frozen=True)
class IncomingReply:
    """One text an approver sent, with the sender as Signal (or the signed legacy
    body) identifies them."""

    sender: str
    text: str
    timestamp_ms: int
    source: str  # "jsonrpc", "sync", "legacy" or "poll"
    # A quote-reply or a reaction: the timestamp of the message it answers (the one
    # /v2/send reported for an approval's message); `text` is then the verdict word.
    answers_ms: int | None = None


_LEGACY_FIELDS = frozenset({"token", "confirmation_code", "approver", "timestamp"})
_SENDER = re.compile(r"[+0-9A-Za-z-]{1,64}")  # E.164 number or ACI UUID
_RFC3339 = re.compile(
    r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d{1,9})?([Zz]|[+-]\d\d:\d\d)", re.ASCII
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_webhook(body: bytes, *, account: str | None = None) -> list[IncomingReply]:
    """The approver texts in a pushed body: a json-rpc `receive` notification (as
    signal-cli-rest-api posts to RECEIVE_WEBHOOK_URL), a list of them, a bare
    `{"envelope", "account"}` item, or the predecessor's `{"token",
    "confirmation_code", "approver", "timestamp"}`. With `account`, notifications
    for other accounts of the same bridge are ignored. Envelopes without text
    (receipts, typing, reactions, attachments) give nothing."""
    if len(body) > MAX_WEBHOOK_BYTES:
        raise InvalidWebhookBody(f"larger than {MAX_WEBHOOK_BYTES} bytes")
    try:
        document = strict_json.loads(body)
    except strict_json.NotJson as exc:
        raise InvalidWebhookBody(exc.reason) from None
    if isinstance(document, dict) and ("token" in document or "confirmation_code" in document):
        return [_legacy(document)]
    items = document if isinstance(document, list) else [document]
    if len(items) > MAX_REPLIES:
        raise InvalidWebhookBody(f"more than {MAX_REPLIES} notifications")
    return _replies(items, "jsonrpc", account)


async def poll(
    base_url: str,
    number: str,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> list[IncomingReply]:
    """Fetch the approver texts signal-cli-rest-api (normal or native mode) has received
    for `number`. Receiving is destructive, so one caller at a time should poll."""
    if not number or timeout <= 0:
        raise ValueError("poll needs the bridge's number and a positive timeout")
    quoted = urllib.parse.quote(number, safe="")
    url = f"{_base_url(base_url)}/v1/receive/{quoted}?max_messages={MAX_POLL_MESSAGES}"
    where = _where(url)
    reply = await _off_loop(_exchange, "GET", url, None, _headers(headers), timeout, MAX_POLL_BYTES)
    if reply.status != 200:
        failure = reply.failure or f"HTTP {reply.status}"
        raise SignalError(
            f"receiving from {where} failed: {failure}",
            code="signal_receive_failed",
            attempts=1,
            upstream_status=reply.status,
        )
    try:
        return _replies(_received_items(reply.body), "poll", number)
    except InvalidWebhookBody as exc:
        raise SignalError(
            f"receiving from {where} failed: unexpected reply ({exc.reason})",
            code="signal_receive_failed",
            attempts=1,
            upstream_status=reply.status,
        ) from None


def _received_items(body: bytes) -> list[Any]:
    if len(body) > MAX_POLL_BYTES:
        raise InvalidWebhookBody(f"larger than {MAX_POLL_BYTES} bytes")
    try:
        items = strict_json.loads(body)
    except strict_json.NotJson as exc:
        raise InvalidWebhookBody(exc.reason) from None
    if not isinstance(items, list) or len(items) > MAX_POLL_ITEMS:
        raise InvalidWebhookBody(f"not a list of at most {MAX_POLL_ITEMS} messages")
    return items


def _replies(items: list[Any], source: str, account: str | None) -> list[IncomingReply]:
    replies = []
    for item in items:
        envelope, item_account = _notification(item)
        if account is not None and item_account not in (None, account):
            continue  # another account served by the same bridge
        reply = _from_envelope(envelope, item_account or account, source)
        if reply is not None:
            replies.append(reply)
    return replies


def _notification(item: object) -> tuple[dict[str, Any], str | None]:
    """The envelope and account of a json-rpc notification or a receive item."""
    if not isinstance(item, dict):
        raise InvalidWebhookBody("each notification must be a JSON object")
    if "jsonrpc" in item:
        if item.get("jsonrpc") != "2.0" or item.get("method") != "receive":
            raise InvalidWebhookBody("only JSON-RPC 2.0 'receive' notifications are accepted")
        params = item.get("params")
        if not isinstance(params, dict):
            raise InvalidWebhookBody("params must be an object")
        item = params
    envelope = item.get("envelope")
    if not isinstance(envelope, dict):
        raise InvalidWebhookBody("envelope must be an object")
    account = item.get("account")
    if account is not None and not isinstance(account, str):
        raise InvalidWebhookBody("account must be a string")
    return envelope, account


def _from_envelope(
    envelope: dict[str, Any], account: str | None, source: str
) -> IncomingReply | None:
    data = _object(envelope, "dataMessage", "dataMessage")
    if data is not None:
        sender = _sender(envelope)
        if sender == account:
            return None  # the bridge's own number is never an approver's reply
        when = _timestamp(envelope, "envelope.timestamp")
        reaction = _object(data, "reaction", "dataMessage.reaction")
        if reaction is not None:
            return _reaction(reaction, sender, when, source)
        text = _text(data, "dataMessage.message")
        if text is None:
            return None
        quote = _object(data, "quote", "dataMessage.quote")
        if quote is not None:
            verdict = _QUOTED_VERDICTS.get(text.strip().upper())
            if verdict is None:
                return None  # a quote-reply that is no verdict: a remark, not an answer
            answers = _timestamp_value(quote.get("id"))
            if answers is None:
                raise InvalidWebhookBody("dataMessage.quote.id must be a timestamp")
            return IncomingReply(sender, verdict, when, source, answers)
        return IncomingReply(sender, text, when, source)
    sync = _object(envelope, "syncMessage", "syncMessage")
    sent = _object(sync, "sentMessage", "syncMessage.sentMessage") if sync else None
    if sent is None:
        return None  # receipts, typing, calls, stories, edits: nothing to read
    text = _text(sent, "syncMessage.sentMessage.message")
    # A transcript is what the account owner typed on another of their devices. It
    # is an answer only when written to the bridge's account itself (Note to Self):
    # the owner's messages to anyone else, or to a group, are not addressed to us.
    if text is None or account is None or _sender(envelope) != account:
        return None
    if not _to_self(sent, envelope, account):
        return None
    if "timestamp" in sent:
        return IncomingReply(account, text, _timestamp(sent, "sentMessage.timestamp"), "sync")
    return IncomingReply(account, text, _timestamp(envelope, "envelope.timestamp"), "sync")


# A reaction answers like a verdict; any other emoji, and taking a reaction back, not.
_REACTIONS = {"\U0001f44d": "APPROVE", "\U0001f44e": "DENY"}
# The words that answer an approval's message when quoting it, without its token.
_QUOTED_VERDICTS = {"APPROVE": "APPROVE", "YES": "APPROVE", "CONFIRM": "APPROVE", "DENY": "DENY"}


def _reaction(
    reaction: dict[str, Any], sender: str, when: int, source: str
) -> IncomingReply | None:
    if reaction.get("isRemove") is True:
        return None
    emoji = reaction.get("emoji")
    verdict = _REACTIONS.get(emoji.removesuffix("\ufe0f")) if isinstance(emoji, str) else None
    if verdict is None:
        return None
    answers = _timestamp_value(reaction.get("targetSentTimestamp"))
    if answers is None:
        raise InvalidWebhookBody("dataMessage.reaction.targetSentTimestamp must be a timestamp")
    return IncomingReply(sender, verdict, when, source, answers)


def _to_self(sent: dict[str, Any], envelope: dict[str, Any], account: str) -> bool:
    if sent.get("groupInfo") is not None:
        return False
    if account in (sent.get("destinationNumber"), sent.get("destination")):
        return True
    own_uuid = envelope.get("sourceUuid")
    return isinstance(own_uuid, str) and bool(own_uuid) and sent.get("destinationUuid") == own_uuid


def _object(container: dict[str, Any], key: str, where: str) -> dict[str, Any] | None:
    value = container.get(key)
    if value is not None and not isinstance(value, dict):
        raise InvalidWebhookBody(f"{where} must be an object")
    return value


def _text(container: dict[str, Any], where: str) -> str | None:
    text = container.get("message")
    if text is None:
        return None
    if not isinstance(text, str):
        raise InvalidWebhookBody(f"{where} must be a string")
    if len(text) > MAX_TEXT_LENGTH:
        raise InvalidWebhookBody(f"{where} longer than {MAX_TEXT_LENGTH} characters")
    return text if text.strip() else None


def _sender(envelope: dict[str, Any]) -> str:
    """The number, or the UUID alone when the sender hides their number."""
    sender = envelope.get("sourceNumber") or envelope.get("source") or envelope.get("sourceUuid")
    return _check_sender(sender, "envelope.sourceNumber")


def _check_sender(sender: object, where: str) -> str:
    if not isinstance(sender, str) or not _SENDER.fullmatch(sender):
        raise InvalidWebhookBody(f"{where} must be a phone number or UUID")
    return sender


def _timestamp(container: dict[str, Any], where: str) -> int:
    value = container.get("timestamp")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < _MAX_TIMESTAMP:
        raise InvalidWebhookBody(f"{where} must be milliseconds since the epoch")
    return value


def _legacy(document: dict[str, Any]) -> IncomingReply:
    """The predecessor's body: only a signed bridge may send it, since it names the approver."""
    unknown = sorted(set(document) - _LEGACY_FIELDS)
    if unknown:
        raise InvalidWebhookBody(f"unknown field {unknown[0][:40]!r}")
    for name in sorted(_LEGACY_FIELDS):
        if not isinstance(document.get(name), str):
            raise InvalidWebhookBody(f"{name}: required, a string")
    token, code = document["token"], document["confirmation_code"]
    if len(token) > 64 or len(code) > 32:
        raise InvalidWebhookBody("token or confirmation_code too long")
    approver = _check_sender(document["approver"], "approver")
    return IncomingReply(approver, f"{code} {token}", _rfc3339_ms(document["timestamp"]), "legacy")


def _rfc3339_ms(text: str) -> int:
    if not _RFC3339.fullmatch(text):
        raise InvalidWebhookBody("timestamp must be RFC 3339 with a time zone")
    try:
        when = datetime.fromisoformat(text.upper())
    except ValueError:
        raise InvalidWebhookBody("timestamp must be RFC 3339 with a time zone") from None
    return (when - _EPOCH) // timedelta(milliseconds=1)


# --- the approver's words -------------------------------------------------------

# ASCII only: a Cyrillic A (U+0410) or a full-width digit is not what the token says.
_COMMAND = re.compile(r"\s*([A-Za-z]+)\s+([0-9A-Za-z]+)\s*", re.ASCII)
_VERBS = {"APPROVE": "approve", "CONFIRM": "approve", "YES": "approve", "DENY": "deny"}


def parse_command(text: str) -> tuple[str, str] | None:
    """("approve" | "deny", TOKEN) for "APPROVE <token>", "DENY <token>" and the
    predecessor's "CONFIRM <token>" / "YES <token>"; None for anything else."""
    match = _COMMAND.fullmatch(text)
    if match is None:
        return None
    action = _VERBS.get(match[1].upper())
    token = normalize(match[2])
    if action is None or token is None:
        return None
    return action, token


# --- bridge authentication ------------------------------------------------------

_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})", re.ASCII)


def sign(secret: bytes, body: bytes) -> str:
    """The `X-Host-Agent-Signature` value for `body`: "sha256=" + hex HMAC-SHA256."""
    if not secret:
        raise ValueError("an empty secret signs nothing")
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether `header` is the signature of exactly `body` under `secret`."""
    if not secret or header is None:
        return False
    match = _SIGNATURE.fullmatch(header)
    if match is None:
        return False
    return hmac.compare_digest(match[1].lower(), sign(secret, body)[len("sha256=") :])
