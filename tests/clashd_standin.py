"""A stand-in for clashd's policy sidecar on a loopback port, speaking its wire format
(crates/clashd: `POST /evaluate {"tool", "args", "context"}` answered with
`{"verdict": "allow" | "review" | "deny", "reason"?}`), recording what it was asked."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Clashd:
    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []
        # tool name -> the answer; `raw` (if set) is sent instead, with `status`
        self.verdicts: dict[str, dict[str, Any]] = {}
        self.default: dict[str, Any] = {"verdict": "allow"}
        self.status = 200
        self.raw: bytes | None = None
        self.delay = 0.0
        self.url = ""

    def answer(self, body: dict[str, Any]) -> tuple[int, bytes]:
        self.asked.append(body)
        time.sleep(self.delay)
        if self.raw is not None:
            return self.status, self.raw
        verdict = self.verdicts.get(str(body.get("tool")), self.default)
        return self.status, json.dumps(verdict).encode()


@contextmanager
def running_clashd() -> Iterator[Clashd]:
    clashd = Clashd()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            status, answer = clashd.answer(body) if self.path == "/evaluate" else (404, b"")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    clashd.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield clashd
    finally:
        server.shutdown()
        server.server_close()
