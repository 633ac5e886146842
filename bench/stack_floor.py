"""The agent's HTTP stack alone: what a denied request costs before host-agent does anything.

`python -m bench.stack_floor --config FILE --reply FILE` serves, as the agent does
(host_agent.tls_server: Hypercorn, mutual TLS with the config's certificates and
limits, one process, one event loop), a Starlette app whose one route reads the
request's body and answers 403 with the bytes of REPLY, the agent's own answer to the
same request: no parsing, no identity, no policy, no audit record. Its rate is the
ceiling for the agent's denied requests on this stack.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from host_agent.config import load_config
from host_agent.tls import ContextHolder, server_context
from host_agent.tls_server import bind_socket, serve_tls

log = logging.getLogger("bench.stack_floor")


def app(reply: bytes) -> Starlette:
    async def refuse(request: Request) -> Response:
        await request.body()
        return Response(reply, status_code=403, media_type="application/json")

    return Starlette(routes=[Route("/host/op", refuse, methods=["POST"])])


async def serve(config_path: Path, reply: bytes) -> None:
    config = load_config(config_path)
    sock = bind_socket(config.server.host, config.server.port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    # The line tests.support.listening_port waits for, as the agent logs it.
    log.info("stack floor listening on https://127.0.0.1:%d", sock.getsockname()[1])
    holder = ContextHolder(server_context(config.server))
    await serve_tls(app(reply), sock, holder, stop, limits=config.server.limits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--reply", type=Path, required=True)
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(serve(options.config, options.reply.read_bytes()))


if __name__ == "__main__":
    main()
