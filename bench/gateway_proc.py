"""The local OHIP gateway as its own process for `make bench` (so that it never shares a core's GIL
with the client it feeds), plus one bench-only route beside the control interface:

    GET /bench/created?first=N&last=M   ->  {"offset": [...], "created_at": [...]}

the exact emit times (`StoredEvent.created_at`, epoch seconds) the latency figures are computed
from. Prints one JSON line with the URLs once it listens, then serves until stdin closes or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import socket
import sys

from aiohttp import web

from ohip_local.gateway import GatewayConfig, LocalGateway


async def _serve(chain: str) -> None:
    config = GatewayConfig(chains=(chain,), token_lifetime=24 * 3600.0)
    async with LocalGateway(config) as gw:

        async def created(request: web.Request) -> web.Response:
            first = int(request.query.get("first", "0"))
            last = int(request.query.get("last", str(1 << 62)))
            events = gw.source.since(chain, first)
            picked = [e for e in events if e.offset <= last]
            return web.json_response(
                {"offset": [e.offset for e in picked], "created_at": [e.created_at for e in picked]}
            )

        app = web.Application()
        app.router.add_get("/bench/created", created)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        await web.SockSite(runner, sock).start()
        cfg = gw.config
        print(
            json.dumps(
                {
                    "url": gw.url,
                    "control_url": gw.control_url,
                    "bench_url": f"http://127.0.0.1:{sock.getsockname()[1]}",
                    "client_id": cfg.client_id,
                    "client_secret": cfg.client_secret,
                    "app_key": cfg.app_key,
                    "enterprise_id": cfg.enterprise_id,
                    "chain": chain,
                    "external_system": cfg.external_systems[0],
                }
            ),
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        stdin = sys.stdin.fileno()
        loop.add_reader(stdin, lambda: None if os.read(stdin, 1) else stop.set())
        await stop.wait()
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chain", default="BENCH")
    args = parser.parse_args()
    # This process keeps every event it emitted (as OHIP keeps 7 days), so the cyclic collector's
    # full passes grow with the run and stalled its sends by 50-150 ms: measured as the relay's
    # p99 latency (15 ms without them). A bench process of a few minutes needs no cycle collection.
    gc.disable()
    asyncio.run(_serve(args.chain))


if __name__ == "__main__":
    main()
