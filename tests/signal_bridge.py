"""A loopback stand-in for signal-cli-rest-api, driven by the test.

It speaks bbernhard/signal-cli-rest-api's wire format in normal mode:
`POST /v2/send` validates like the real handler and answers 201
`{"timestamp": "<ms>"}` (or, switched, a list of signal-cli SendMessageResults);
`GET /v1/receive/{number}` hands out the queued `{"envelope", "account"}`
items once, as a JSON array. `POST /webhook` is a generic JSON webhook sink.
Every request is recorded with its headers, and the next requests can be made
to fail, drop the connection or stall.

Run on its own (`python3 -m tests.signal_bridge --port N --outbox FILE`, as
scripts/demo.sh does) it writes each message sent to FILE, one JSON line, and
takes an approver's reply at `POST /stand-in/reply {"sender", "text"}`: what a
phone would show, and what a person would type back.

The builders produce the JSON that signal-cli emits (JsonMessageEnvelope and
friends), for tests that POST them to the agent's /webhook/signal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

Json = dict[str, Any]


# The bridge's own number (the sender of every outgoing message).
BRIDGE_NUMBER = "+15555550000"


def uuid_for(number: str) -> str:
    """A stable ACI UUID per number, as Signal would report it."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"signal:{number}"))


def _source(number: str, timestamp_ms: int, name: str) -> Json:
    return {
        "source": number,
        "sourceNumber": number,
        "sourceUuid": uuid_for(number),
        "sourceName": name,
        "sourceDevice": 1,
        "timestamp": timestamp_ms,
        "serverReceivedTimestamp": timestamp_ms + 41,
        "serverDeliveredTimestamp": timestamp_ms + 57,
    }


def _data(text: str | None, timestamp_ms: int, group_id: str | None) -> Json:
    data: Json = {
        "timestamp": timestamp_ms,
        "message": text,
        "expiresInSeconds": 0,
        "viewOnce": False,
    }
    if group_id is not None:
        data["groupInfo"] = {"groupId": group_id, "type": "DELIVER"}
    return data


def envelope(
    sender: str, text: str | None, timestamp_ms: int, *, group_id: str | None = None
) -> Json:
    """A message `sender` wrote to the bridge (or to a group it is in)."""
    return {
        **_source(sender, timestamp_ms, "Approver"),
        "dataMessage": _data(text, timestamp_ms, group_id),
    }


def sync_message(
    account: str,
    text: str | None,
    timestamp_ms: int,
    *,
    destination: str | None = None,
    group_id: str | None = None,
) -> Json:
    """What the bridge, a linked device of `account`, receives when the owner's phone
    sends `text`: to `destination`, to a group, or by default to itself (Note to Self)."""
    target = None if group_id is not None else (destination or account)
    sent = {
        "destination": target,
        "destinationNumber": target,
        "destinationUuid": uuid_for(target) if target is not None else None,
        **_data(text, timestamp_ms, group_id),
    }
    return {**_source(account, timestamp_ms, "Owner"), "syncMessage": {"sentMessage": sent}}


def receipt(sender: str, timestamp_ms: int, *, read: bool = False) -> Json:
    """A delivery (or read) receipt for a message the bridge sent earlier."""
    return {
        **_source(sender, timestamp_ms, "Approver"),
        "receiptMessage": {
            "when": timestamp_ms,
            "isDelivery": not read,
            "isRead": read,
            "isViewed": False,
            "timestamps": [timestamp_ms - 5000],
        },
    }


def typing(sender: str, timestamp_ms: int) -> Json:
    return {
        **_source(sender, timestamp_ms, "Approver"),
        "typingMessage": {"action": "STARTED", "timestamp": timestamp_ms},
    }


def jsonrpc_receive(envelope: Json, account: str) -> Json:
    """The line signal-cli's daemon emits, which signal-cli-rest-api (json-rpc mode)
    POSTs unchanged to RECEIVE_WEBHOOK_URL."""
    return {
        "jsonrpc": "2.0",
        "method": "receive",
        "params": {"envelope": envelope, "account": account},
    }


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str  # as sent, query included
    headers: dict[str, str]  # names lower-cased
    body: Any  # the parsed JSON body; None for a GET or a body that is not JSON
    status: int | None  # what the bridge answered; None when it dropped the connection
    reply: Any  # the JSON it answered with


@dataclass(frozen=True)
class _Fault:
    status: int | None = None  # answer this instead of the real thing
    body: Any = None
    drop: bool = False  # close the connection without an answer
    delay: float = 0.0  # stall this long first


class SignalBridge:
    """signal-cli-rest-api for one registered `number`, on a loopback port."""

    def __init__(self, number: str, port: int = 0, outbox: Path | None = None) -> None:
        self.number = number
        # Standing alone: messages sent go to this file, and replies come in over HTTP.
        self.outbox = outbox
        self.array_replies = False  # answer /v2/send with per-recipient results
        self.unregistered: set[str] = set()  # recipients that fail in array replies
        self._lock = threading.Lock()
        self._requests: list[Recorded] = []
        self._faults: deque[_Fault] = deque()
        self._inbox: list[Json] = []
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", port), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # --- driving it -------------------------------------------------------------

    def answer_next(self, count: int, status: int, body: Any = None) -> None:
        """The next `count` requests get `status` and `body` instead of the real answer."""
        self._push(count, _Fault(status=status, body=body))

    def fail_next(self, count: int, status: int = 500) -> None:
        self.answer_next(count, status, {"error": "injected failure"})

    def drop_next(self, count: int) -> None:
        """The next `count` requests are read, then the connection is closed unanswered."""
        self._push(count, _Fault(drop=True))

    def delay_next(self, count: int, seconds: float) -> None:
        """The next `count` requests are answered normally, but only after `seconds`."""
        self._push(count, _Fault(delay=seconds))

    def queue(self, envelope: Json) -> Json:
        """Make `envelope` the next thing GET /v1/receive hands out."""
        item = {"envelope": envelope, "account": self.number}
        with self._lock:
            self._inbox.append(item)
        return item

    def queue_reply(self, sender: str, text: str, timestamp_ms: int | None = None) -> Json:
        stamp = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
        return self.queue(envelope(sender, text, stamp))

    # --- what it saw ------------------------------------------------------------

    def recorded(self, path: str | None = None) -> list[Recorded]:
        """Every request so far (or those whose path, without query, is `path`)."""
        with self._lock:
            requests = list(self._requests)
        return [r for r in requests if path is None or urlsplit(r.path).path == path]

    @property
    def sent(self) -> list[Any]:
        """The bodies POSTed to /v2/send, failed attempts included."""
        return [r.body for r in self.recorded("/v2/send")]

    @property
    def webhook_posts(self) -> list[Any]:
        return [r.body for r in self.recorded("/webhook")]

    # --- life cycle -------------------------------------------------------------

    def start(self) -> SignalBridge:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    # --- serving ----------------------------------------------------------------

    def _push(self, count: int, fault: _Fault) -> None:
        with self._lock:
            self._faults.extend([fault] * count)

    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
            valid = raw != b""
        except ValueError:
            body, valid = None, False
        with self._lock:
            fault = self._faults.popleft() if self._faults else _Fault()
        if fault.delay:
            self._stopping.wait(fault.delay)
        if fault.drop:
            status, reply = None, None
        elif fault.status is not None:
            status, reply = fault.status, fault.body
        else:
            status, reply = self._route(method, handler.path, body, valid)
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self._lock:
            self._requests.append(Recorded(method, handler.path, headers, body, status, reply))
        if status is None:
            handler.close_connection = True
            return
        payload = json.dumps(reply).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def _route(self, method: str, target: str, body: Any, valid: bool) -> tuple[int, Any]:
        path = urlsplit(target).path
        if method == "POST" and path == "/v2/send":
            return self._send(body if valid else None)
        if method == "POST" and path == "/webhook":
            return 200, {}
        if method == "GET" and path.startswith("/v1/receive/"):
            return self._receive(unquote(path.removeprefix("/v1/receive/")), target)
        if method == "POST" and path == "/stand-in/reply" and self.outbox is not None:
            if not isinstance(body, dict) or not {"sender", "text"} <= set(body):
                return 400, {"error": "give sender and text"}
            return 200, self.queue_reply(str(body["sender"]), str(body["text"]))
        return 404, {"error": "404 page not found"}

    def _send(self, body: Any) -> tuple[int, Any]:
        """Mirrors api.go SendV2's checks and answers."""
        if not isinstance(body, dict):
            return 400, {"error": "Couldn't process request - invalid request"}
        recipients = body.get("recipients")
        if not isinstance(recipients, list) or not recipients:
            return 400, {
                "error": "Couldn't process request - please provide at least one recipient"
            }
        if not body.get("number"):
            return 400, {"error": "Couldn't process request - please provide a valid number"}
        if body["number"] != self.number:
            return 400, {"error": f"User {body['number']} is not registered."}
        timestamp = int(time.time() * 1000)
        if self.outbox is not None:
            sent = {"recipients": recipients, "message": body.get("message")}
            with self.outbox.open("a") as outbox:
                outbox.write(json.dumps(sent) + "\n")
        if not self.array_replies:
            return 201, {"timestamp": str(timestamp)}
        return 201, [
            {
                "recipientAddress": {"uuid": uuid_for(r), "number": r},
                "type": "UNREGISTERED_FAILURE" if r in self.unregistered else "SUCCESS",
            }
            for r in recipients
        ]

    def _receive(self, number: str, target: str) -> tuple[int, Any]:
        if number != self.number:
            return 400, {"error": f"User {number} is not registered."}
        limit = int(parse_qs(urlsplit(target).query).get("max_messages", ["0"])[0])
        with self._lock:
            count = limit if limit > 0 else len(self._inbox)
            items, self._inbox = self._inbox[:count], self._inbox[count:]
        return 200, items


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and left is part of the tests, not a bridge bug.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler(bridge: SignalBridge) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bridge._serve(self, "POST")

        def do_GET(self) -> None:
            bridge._serve(self, "GET")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def running_bridge(number: str = BRIDGE_NUMBER) -> Iterator[SignalBridge]:
    bridge = SignalBridge(number).start()
    try:
        yield bridge
    finally:
        bridge.stop()


def main() -> None:
    """The stand-in on its own, for scripts/demo.sh (see the module's docstring)."""
    parser = argparse.ArgumentParser(description="a signal-cli-rest-api stand-in")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--outbox", type=Path, required=True)
    parser.add_argument("--pid-file", type=Path)
    options = parser.parse_args()
    bridge = SignalBridge(BRIDGE_NUMBER, options.port, options.outbox)
    if options.pid_file is not None:  # whole or not at all: demo.sh reads it as it appears
        temporary = options.pid_file.with_name(f".{options.pid_file.name}.tmp")
        temporary.write_text(f"{os.getpid()}\n")
        temporary.replace(options.pid_file)
    bridge._server.serve_forever()


if __name__ == "__main__":
    main()
