"""A local OHIP gateway on its own thread and event loop.

    with running_gateway(GatewayConfig(seed=7)) as gw:
        ControlClient(gw.control_url).emit(10)
        ... run a client that has its own event loop, or a subprocess, against gw.url ...

For the demo and for tests whose client under test runs its own loop (or is another process).
The gateway's objects belong to the gateway's thread: from the caller's thread talk to it over
HTTP (`ControlClient(gw.control_url)`), or hand work to its loop with `call_in_gateway`; reading
`gw.url`, `gw.ws_url`, `gw.control_url` and `gw.config` is safe, and so is reading `url`, `ws_url`
and `config` of an environment (`gw.environment(i)`). A start failure (a port in use, say) is
raised in the caller as the gateway raised it (`GatewayError`, one line).
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import TypeVar

from .gateway import GatewayConfig, LocalGateway
from .source import Clock

_T = TypeVar("_T")

START_TIMEOUT = 30.0  # only a safety net: start normally takes milliseconds


class _Running:
    def __init__(self, gateway: LocalGateway, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
        self.gateway = gateway
        self.loop = loop
        self.stop = stop


_LOOPS: weakref.WeakKeyDictionary[LocalGateway, asyncio.AbstractEventLoop] = weakref.WeakKeyDictionary()


def call_in_gateway(gateway: LocalGateway, fn: Callable[[], _T], *, timeout: float = 10.0) -> _T:
    """Run `fn()` on the gateway's loop (for example `lambda: gw.emit(5)`) and return its result."""
    loop = _LOOPS.get(gateway)
    if loop is None:
        raise RuntimeError("this gateway is not running on a gateway thread")
    result: Future[_T] = Future()

    def run() -> None:
        try:
            result.set_result(fn())
        except BaseException as exc:
            result.set_exception(exc)

    loop.call_soon_threadsafe(run)
    return result.result(timeout)


@contextmanager
def running_gateway(
    config: GatewayConfig | None = None, *, clock: Clock = time.time
) -> Iterator[LocalGateway]:
    """Start a gateway on a new thread, yield it once it listens, stop it and join the thread."""
    started: Future[_Running] = Future()
    finished: Future[None] = Future()

    async def main() -> None:
        gateway = LocalGateway(config, clock=clock)
        await gateway.start()
        stop = asyncio.Event()
        started.set_result(_Running(gateway, asyncio.get_running_loop(), stop))
        try:
            await stop.wait()
        finally:
            await gateway.stop()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            else:
                finished.set_exception(exc)
        else:
            finished.set_result(None)
        finally:
            if not started.done():  # pragma: no cover - main() always sets one of them
                started.set_exception(RuntimeError("the gateway thread ended before starting"))

    thread = threading.Thread(target=run, name="ohip-local-gateway", daemon=True)
    thread.start()
    try:
        running = started.result(START_TIMEOUT)
    except BaseException:
        thread.join(START_TIMEOUT)
        raise
    _LOOPS[running.gateway] = running.loop
    try:
        yield running.gateway
    finally:
        _LOOPS.pop(running.gateway, None)
        running.loop.call_soon_threadsafe(running.stop.set)
        thread.join()
    exc = finished.exception()
    if exc is not None:
        raise exc
