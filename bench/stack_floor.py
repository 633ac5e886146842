"""The agent's HTTP stack alone: what a request costs before host-agent does anything.

`python -m bench.stack_floor --config FILE --reply FILE` serves, as the agent does
(host_agent.tls_server: Hypercorn, mutual TLS with the config's certificates and
limits, one process, one event loop), a Starlette app whose one route reads the
request's body and answers 403 with the bytes of REPLY, the agent's own answer to the
same request: no parsing, no identity, no policy, no audit record. Its rate is the
ceiling for the agent's denied requests on this stack.

With `--operation FILE` instead (a request's JSON, and `unix_user` for the adapter),
the route runs that one operation, parsed once at the start, through the agent's own
runner (sudo, the wrapper, the tool) and answers 200 with its result: the ceiling for
the agent's operations, all of it but host-agent's own work on each request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from host_agent.adapters import build_registry
from host_agent.config import Config, load_config
from host_agent.operations import Operation
from host_agent.request import parse_host_op
from host_agent.runner import Runner
from host_agent.tls import ContextHolder, server_context
from host_agent.tls_server import bind_socket, serve_tls

log = logging.getLogger("bench.stack_floor")


def refusing(reply: bytes) -> Starlette:
    async def refuse(request: Request) -> Response:
        await request.body()
        return Response(reply, status_code=403, media_type="application/json")

    return Starlette(routes=[Route("/host/op", refuse, methods=["POST"])])


def running(runner: Runner, operation: Operation) -> Starlette:
    async def run(request: Request) -> Response:
        await request.body()
        result = await runner.run(operation)
        fields = ("exit_code", "stdout", "stderr", "truncated", "duration_seconds")
        return JSONResponse({name: getattr(result, name) for name in fields})

    return Starlette(routes=[Route("/host/op", run, methods=["POST"])])


def running_one(document: dict[str, Any]) -> Callable[[Config], Starlette]:
    """`running` the operation `document` asks for, parsed once by the agent's adapter."""

    def build(config: Config) -> Starlette:
        request = parse_host_op({key: document[key] for key in ("kind", "resource", "args")})
        adapter = build_registry(config).adapter_for(request.kind)
        return running(Runner(config.runner), adapter.parse(request, document["unix_user"]))

    return build


async def serve(config_path: Path, build: Callable[[Config], Starlette]) -> None:
    config = load_config(config_path)
    app = build(config)
    sock = bind_socket(config.server.host, config.server.port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    # The line tests.support.listening_port waits for, as the agent logs it.
    log.info("stack floor listening on https://127.0.0.1:%d", sock.getsockname()[1])
    holder = ContextHolder(server_context(config.server))
    await serve_tls(app, sock, holder, stop, limits=config.server.limits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    answer = parser.add_mutually_exclusive_group(required=True)
    answer.add_argument("--reply", type=Path)
    answer.add_argument("--operation", type=Path)
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    if options.reply is not None:
        reply = options.reply.read_bytes()
        asyncio.run(serve(options.config, lambda _: refusing(reply)))
    else:
        asyncio.run(serve(options.config, running_one(json.loads(options.operation.read_text()))))


if __name__ == "__main__":
    main()
