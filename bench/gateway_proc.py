"""The local OHIP gateway as its own process for `make bench` (so that it never shares a core's GIL
with the client it feeds), plus one bench-only route beside the control interface:

    GET /bench/created?first=N&last=M   ->  {"offset": [...], "created_at": [...]}

the exact emit times (`StoredEvent.created_at`, epoch seconds) the latency figures are computed
from. Prints one JSON line with the URLs once it listens, then serves until stdin closes or SIGTERM.

With `--environments E --chains-per-environment M` (bench/fleet.py) it serves E OPERA environments
of M chains each (`ohip_local.gateway.fleet_config`), every chain numbered from an offset of its own
(`FIRST_OFFSET + k * OFFSET_SPACING`, k its place in the list), so that an offset names its chain;
the JSON line then also lists the environments, and one more bench-only route generates a backlog:

    POST /bench/burst {"count": N, "chains": ["ENV0CHAIN001", ...]}   (default: every chain)
        ->  {"events": ..., "seconds": ..., "generated_at": ..., "ranges": {chain: [first, last]}}

All of it in one go on the gateway's loop, before any of it is sent: the subscribers then read a
backlog, as the single-chain throughput run reads one, without generation interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import os
import signal
import socket
import sys
import time
from typing import Any

from aiohttp import web

from ohip_local.gateway import EnvironmentConfig, GatewayConfig, LocalGateway, fleet_config
from ohip_local.source import FIRST_OFFSET

# Between two chains' first offsets in the fleet shape: far more than a bench emits on one chain.
OFFSET_SPACING = 10**8


def fleet_gateway_config(environments: int, chains_per_environment: int) -> GatewayConfig:
    """`fleet_config` with a first offset of its own for every chain (see the module docstring)."""
    base = fleet_config(environments, chains_per_environment, GatewayConfig(token_lifetime=24 * 3600.0))
    places = iter(range(environments * chains_per_environment))

    def numbered(chains: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
        return tuple((chain, FIRST_OFFSET + next(places) * OFFSET_SPACING) for chain in chains)

    env0 = numbered(base.chains)
    more: list[EnvironmentConfig] = [
        dataclasses.replace(env, first_offsets=numbered(env.chains)) for env in base.environments
    ]
    return dataclasses.replace(base, first_offsets=env0, environments=tuple(more))


def _fleet_routes(gw: LocalGateway, app: web.Application) -> list[dict[str, Any]]:
    """The burst route (see the module docstring); returns the environments for the JSON line."""
    where = {chain: env for env in gw.environments for chain in env.chains}

    async def burst(request: web.Request) -> web.Response:
        body = await request.json()
        count = int(body["count"])
        chains = body.get("chains") or list(where)
        t0 = time.perf_counter()
        ranges: dict[str, list[int]] = {}
        for chain in chains:
            events = where[chain].emit(count, chain=chain)
            ranges[chain] = [events[0].offset, events[-1].offset]
        seconds = time.perf_counter() - t0
        return web.json_response(
            {
                "events": count * len(chains),
                "seconds": seconds,
                "generated_at": time.time(),
                "ranges": ranges,
            }
        )

    app.router.add_post("/bench/burst", burst)
    return [
        {
            "index": env.index,
            "url": env.url,
            "client_id": env.config.client_id,
            "client_secret": env.config.client_secret,
            "app_key": env.config.app_key,
            "enterprise_id": env.config.enterprise_id,
            "external_system": env.config.external_systems[0],
            "chains": list(env.chains),
            "first_offsets": dict(env.config.first_offsets),
        }
        for env in gw.environments
    ]


async def _serve(chain: str, environments: int = 0, chains_per_environment: int = 1) -> None:
    if environments:
        config = fleet_gateway_config(environments, chains_per_environment)
        chain = config.chains[0]
    else:
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
        fleet = _fleet_routes(gw, app) if environments else None
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
                    **({"environments": fleet} if fleet is not None else {}),
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
    parser.add_argument("--environments", type=int, default=0, help="the fleet shape: this many environments")
    parser.add_argument("--chains-per-environment", type=int, default=1)
    args = parser.parse_args()
    # This process keeps every event it emitted (as OHIP keeps 7 days), so the cyclic collector's
    # full passes grow with the run and stalled its sends by 50-150 ms: measured as the relay's
    # p99 latency (15 ms without them). A bench process of a few minutes needs no cycle collection.
    gc.disable()
    asyncio.run(_serve(args.chain, args.environments, args.chains_per_environment))


if __name__ == "__main__":
    main()
