"""The local OHIP gateway: OAuth, Streaming API, Poll API and a control interface on loopback.

    async with LocalGateway(GatewayConfig()) as gw:
        gw.url            # https-style base URL of the gateway (http://127.0.0.1:PORT)
        gw.control_url    # the control interface (tests and the demo drive the gateway with it)
        gw.source         # the event source both channels read
        gw.emit(10)       # append 10 generated events
        gw.emit(6, adversarial=("lookalike",))   # or adversarial ones (adversarial.py)

`serve_forever(config)` runs one until cancelled (`ohip-relay local gateway`); the environment
variable `OHIP_LOCAL_FIRST_OFFSET` sets where every chain's offsets start (default 1001; 0 and up
to 20 digits are allowed, see `GatewayConfig.first_offset`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from aiohttp import web

from ohip_relay.errors import StartupError

from .adversarial import AdversarialGenerator, AdversarialUnit, parse_selection
from .generator import EventGenerator
from .oauth import OAuthEndpoint, TokenStore
from .source import (
    FIRST_OFFSET,
    MAX_OFFSET,
    RETENTION_SECONDS,
    Clock,
    EventSource,
    MissingAs,
    StoredEvent,
)

FIRST_OFFSET_ENV = "OHIP_LOCAL_FIRST_OFFSET"


class GatewayError(StartupError):
    """The gateway cannot start (bad configuration, port in use); the message is one line."""


@dataclass(frozen=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port
    control_port: int = 0
    client_id: str = "local-client"
    client_secret: str = "local-secret"  # noqa: S105 - the local gateway's documented test credential
    app_key: str = "local-app-key"
    enterprise_id: str = "LOCALENT"
    chains: tuple[str, ...] = ("LOCALCHAIN",)
    hotels: tuple[str, ...] = ("HOTEL1", "HOTEL2", "HOTEL3")
    external_systems: tuple[str, ...] = ("RELAY",)
    token_lifetime: float = 3600.0
    init_timeout: float = 5.0  # connection_init deadline (4408)
    server_ping_interval: float = 30.0
    pong_timeout: float = 180.0  # no pong for this long: close (4504)
    conflict_lockout: float = 10.0  # after a 4409, the app+chain is refused this long
    resubscribe_gap: float = 10.0  # documented client rule; the gateway records violations
    retention: float = RETENTION_SECONDS
    seed: int = 1
    approved_chains: tuple[str, ...] | None = None  # None: every configured chain is approved
    # The key the token endpoint accepts (None: `app_key`). Another value reproduces an application
    # that can get tokens but that the streaming endpoint does not know (HTTP 401 on the handshake).
    oauth_app_key: str | None = None
    # Where each chain's log starts: `first_offset` for every chain, `first_offsets` per chain
    # ((chain, offset) pairs). 0 and offsets of 19-20 digits (up to 10**20 - 1) are legal and
    # adversarial: a relay must not treat offset 0 as "nothing" nor assume a 64-bit integer.
    first_offset: int = FIRST_OFFSET
    first_offsets: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        for name in ("port", "control_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise GatewayError(f"gateway {name.replace('_', ' ')} {value} is not a TCP port (0-65535)")
        if not self.chains:
            raise GatewayError("the gateway needs at least one chain")
        if not self.hotels:
            raise GatewayError("the gateway needs at least one hotel")
        for name in ("token_lifetime", "init_timeout", "server_ping_interval", "pong_timeout", "retention"):
            if getattr(self, name) <= 0:
                raise GatewayError(f"gateway {name.replace('_', ' ')} must be positive")
        for chain, offset in (("", self.first_offset), *self.first_offsets):
            if chain and chain not in self.chains:
                raise GatewayError(f"gateway first offsets name an unknown chain {chain!r}")
            if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
                raise GatewayError(f"gateway first offset must be an integer from 0 to {MAX_OFFSET}")

    def first_offset_of(self, chain: str) -> int:
        return dict(self.first_offsets).get(chain, self.first_offset)

    @property
    def key_hash(self) -> str:
        return hashlib.sha256(self.app_key.encode()).hexdigest()


@dataclass
class GatewayContext:
    """What the gateway's endpoints share."""

    config: GatewayConfig
    source: EventSource
    tokens: TokenStore
    generator: EventGenerator
    clock: Clock
    approvals: dict[str, bool] = field(default_factory=dict)

    def approved(self, chain: str) -> bool:
        return self.approvals.get(chain, False)

    adversary: AdversarialGenerator | None = None

    def __post_init__(self) -> None:
        if self.adversary is None:
            self.adversary = AdversarialGenerator(seed=self.config.seed, hotels=self.config.hotels)

    def emit(
        self,
        count: int = 1,
        *,
        hotel: str | None = None,
        chain: str | None = None,
        adversarial: str | Sequence[str] | None = None,
        missing_as: MissingAs | None = None,
    ) -> list[StoredEvent]:
        """Append `count` events: generated ones, or adversarial ones of the kinds named by
        `adversarial` ("lookalike", "unicode:surrogate", "all", ...: adversarial.py)."""
        target = chain or self.config.chains[0]
        if adversarial is None:
            return [self.source.append(target, self.generator.next_draft(hotel=hotel)) for _ in range(count)]
        units = self.adversarial_units(count, adversarial, hotel=hotel, missing_as=missing_as)
        return [event for unit in units for event in self.append_unit(target, unit)]

    def adversarial_units(
        self,
        count: int,
        kinds: str | Sequence[str],
        *,
        hotel: str | None = None,
        missing_as: MissingAs | None = None,
    ) -> list[AdversarialUnit]:
        """Adversarial units holding exactly `count` events (ValueError for an unknown kind)."""
        assert self.adversary is not None
        return self.adversary.units(parse_selection(kinds), count, hotel=hotel, missing_as=missing_as)

    def append_unit(self, chain: str, unit: AdversarialUnit) -> list[StoredEvent]:
        """Append a unit's events at once; lookalikes are stamped within one second of the clock."""
        now = self.clock()
        step = 0.0001 if math.floor(now + 0.0001 * len(unit.drafts)) == math.floor(now) else 0.0
        return [
            self.source.append(chain, draft, created_at=now + i * step if unit.same_second else None)
            for i, draft in enumerate(unit.drafts)
        ]


def config_from_environment(config: GatewayConfig, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """`config` with `OHIP_LOCAL_FIRST_OFFSET` (when set) as every chain's first offset."""
    env = os.environ if environ is None else environ
    text = env.get(FIRST_OFFSET_ENV, "").strip()
    if not text:
        return config
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        raise GatewayError(f"{FIRST_OFFSET_ENV} must be 1-20 digits (0 to {MAX_OFFSET})")
    return dataclasses.replace(config, first_offset=int(text))


def _bind(host: str, port: int, what: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = "in use" if exc.errno in (98, 48) else (exc.strerror or str(exc))
        raise GatewayError(f"cannot listen for the {what} on {host}:{port}: {reason}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


class LocalGateway:
    def __init__(self, config: GatewayConfig | None = None, *, clock: Clock = time.time) -> None:
        from .control import build_control_app
        from .poll import PollEndpoint
        from .rest import RestEndpoint
        from .streaming import StreamingEndpoint

        self.config = config or GatewayConfig()
        cfg = self.config
        approved = cfg.chains if cfg.approved_chains is None else cfg.approved_chains
        self.context = GatewayContext(
            config=cfg,
            source=EventSource(
                cfg.chains,
                cfg.external_systems,
                retention=cfg.retention,
                clock=clock,
                seed=cfg.seed,
                first_offset=cfg.first_offset,
                first_offsets=dict(cfg.first_offsets),
            ),
            tokens=TokenStore(cfg.token_lifetime, clock),
            generator=EventGenerator(seed=cfg.seed, hotels=cfg.hotels),
            clock=clock,
            approvals={chain: chain in approved for chain in cfg.chains},
        )
        self.oauth = OAuthEndpoint(
            client_id=cfg.client_id,
            client_secret=cfg.client_secret,
            app_key=cfg.app_key if cfg.oauth_app_key is None else cfg.oauth_app_key,
            enterprise_id=cfg.enterprise_id,
            tokens=self.context.tokens,
        )
        self.streaming = StreamingEndpoint(self.context)
        self.poll = PollEndpoint(self.context)
        self.rest = RestEndpoint(self.context)  # REST resources (the enricher's GETs)

        app = web.Application()
        app.router.add_post("/oauth/v1/tokens", self.oauth.handle)
        app.router.add_get("/subscriptions", self.streaming.handle)
        app.router.add_get("/int/v1/externalSystem/{system}/businessEvents", self.poll.handle)
        app.router.add_get("/int/v1/externalSystem/{system}/hotels/{hotel}/businessEvents", self.poll.handle)
        self.rest.add_routes(app)
        self._app = app
        self._control_app = build_control_app(self.context, self.streaming, self.poll, self.rest)
        self._runners: list[web.AppRunner] = []
        self.url = ""
        self.control_url = ""

    @property
    def source(self) -> EventSource:
        return self.context.source

    @property
    def tokens(self) -> TokenStore:
        return self.context.tokens

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + f"/subscriptions?key={self.config.key_hash}"

    def emit(
        self,
        count: int = 1,
        *,
        hotel: str | None = None,
        chain: str | None = None,
        adversarial: str | Sequence[str] | None = None,
        missing_as: MissingAs | None = None,
    ) -> list[StoredEvent]:
        return self.context.emit(
            count, hotel=hotel, chain=chain, adversarial=adversarial, missing_as=missing_as
        )

    async def start(self) -> None:
        cfg = self.config
        main_sock = _bind(cfg.host, cfg.port, "OHIP gateway")
        try:
            control_sock = _bind(cfg.host, cfg.control_port, "gateway control interface")
        except GatewayError:
            main_sock.close()
            raise
        for app, sock in ((self._app, main_sock), (self._control_app, control_sock)):
            runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
            await runner.setup()
            await web.SockSite(runner, sock).start()
            self._runners.append(runner)
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        self.url = f"http://{host}:{main_sock.getsockname()[1]}"
        self.control_url = f"http://{host}:{control_sock.getsockname()[1]}"

    async def stop(self) -> None:
        await self.streaming.shutdown()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def serve_forever(config: GatewayConfig) -> None:
    """Run a gateway until cancelled (Ctrl-C), printing where it listens and how to point the relay at it.
    `OHIP_LOCAL_FIRST_OFFSET` in the environment sets where the chains' offsets start."""
    config = config_from_environment(config)
    async with LocalGateway(config) as gw:
        print(f"local OHIP gateway on {gw.url} (control interface {gw.control_url})")
        if config.first_offset != FIRST_OFFSET:
            print(f"offsets start at {config.first_offset} ({FIRST_OFFSET_ENV})")
        print(f"export OHIP_GATEWAY_URL={gw.url}")
        print(f"export OHIP_CLIENT_ID={config.client_id}")
        print(f"export OHIP_CLIENT_SECRET={config.client_secret}")
        print(f"export OHIP_APP_KEY={config.app_key}")
        print(f"export OHIP_ENTERPRISE_ID={config.enterprise_id}")
        print(f"export OHIP_CHAIN_CODE={config.chains[0]}")
        print(f"export OHIP_HOTEL_IDS={','.join(config.hotels)}")
        print(f"export OHIP_EXTERNAL_SYSTEM={config.external_systems[0]}")
        print("Ctrl-C to stop", flush=True)
        await asyncio.Event().wait()
