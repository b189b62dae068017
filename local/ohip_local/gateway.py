"""The local OHIP gateway: OAuth, Streaming API, Poll API and a control interface on loopback.

    async with LocalGateway(GatewayConfig()) as gw:
        gw.url            # https-style base URL of the gateway (http://127.0.0.1:PORT)
        gw.control_url    # the control interface (tests and the demo drive the gateway with it)
        gw.source         # the event source both channels read
        gw.emit(10)       # append 10 generated events
        gw.emit(6, adversarial=("lookalike",))   # or adversarial ones (adversarial.py)

Several OPERA environments: `GatewayConfig`'s own credential and chain fields are environment 0,
and `environments` (EnvironmentConfig) adds environments 1, 2, ..., each on a port of its own
(a gateway host of its own, as in reality) with its own OAuth client, application key, chains,
event logs, tokens and one-connection-per-chain rule: a token of one environment is refused by
another (HTTP 401, close 4401), and the same chain code in two environments is two chains.
`fleet_config(2, 100)` builds such a config. `gw.environment(i)` is environment i
(`.url`, `.ws_url`, `.config`, `.source`, `.tokens`, `.streaming`, `.emit(...)`); `gw.url`,
`gw.source`, `gw.emit` and the other single-environment attributes are environment 0's. One
control interface serves them all (control.py). An idle chain costs no task and no log.

`serve_forever(config)` runs one until cancelled (`ohip-relay local gateway`); the environment
variable `OHIP_LOCAL_FIRST_OFFSET` sets where every chain's offsets start (default 1001; 0 and up
to 20 digits are allowed, see `GatewayConfig.first_offset`), in every environment.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
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


def _check_port(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise GatewayError(f"{what} {value} is not a TCP port (0-65535)")


def _check_environment(
    what: str,
    chains: tuple[str, ...],
    hotels: tuple[str, ...],
    first_offset: int,
    first_offsets: tuple[tuple[str, int], ...],
    system_chains: tuple[tuple[str, str], ...] = (),
    external_systems: tuple[str, ...] = (),
) -> None:
    """The rules every environment's settings follow; `what` ("gateway", "environment") names it."""
    if not chains:
        raise GatewayError(f"the {what} needs at least one chain")
    if not hotels:
        raise GatewayError(f"the {what} needs at least one hotel")
    for chain, offset in (("", first_offset), *first_offsets):
        if chain and chain not in chains:
            raise GatewayError(f"{what} first offsets name an unknown chain {chain!r}")
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
            raise GatewayError(f"{what} first offset must be an integer from 0 to {MAX_OFFSET}")
    for system, chain in system_chains:
        if system not in external_systems or chain not in chains:
            raise GatewayError(
                f"{what} system chains pair {system!r} with {chain!r}: not its system and chain"
            )


@dataclass(frozen=True)
class EnvironmentConfig:
    """One OPERA environment: its own port (a gateway host of its own, as in reality), OAuth
    client, application key, enterprise, chains, hotels, external systems and event logs.

    The fields mean what `GatewayConfig`'s fields of the same names mean; environment 0 is
    `GatewayConfig`'s own fields. `seed` None: the gateway's seed plus the environment's index,
    so that no two environments issue the same uniqueEventId."""

    port: int = 0
    client_id: str = "local-client"
    client_secret: str = "local-secret"  # noqa: S105 - the local gateway's documented test credential
    app_key: str = "local-app-key"
    enterprise_id: str = "LOCALENT"
    chains: tuple[str, ...] = ("LOCALCHAIN",)
    hotels: tuple[str, ...] = ("HOTEL1", "HOTEL2", "HOTEL3")
    external_systems: tuple[str, ...] = ("RELAY",)
    approved_chains: tuple[str, ...] | None = None
    oauth_app_key: str | None = None
    first_offset: int = FIRST_OFFSET
    first_offsets: tuple[tuple[str, int], ...] = ()
    system_chains: tuple[tuple[str, str], ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        _check_port(self.port, "environment port")
        _check_environment(
            "environment",
            self.chains,
            self.hotels,
            self.first_offset,
            self.first_offsets,
            self.system_chains,
            self.external_systems,
        )

    @property
    def key_hash(self) -> str:
        return hashlib.sha256(self.app_key.encode()).hexdigest()


#: The fields an environment has of its own (`seed` aside): GatewayConfig holds environment 0's.
ENVIRONMENT_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(EnvironmentConfig) if f.name != "seed"
)


@dataclass(frozen=True)
class GatewayConfig:
    """The gateway's settings. The fields from `port` to `first_offsets` (ENVIRONMENT_FIELDS) are
    environment 0's; `environments` adds environments 1, 2, ... (each on its own port), and the
    other fields (timeouts, lifetimes, the control port) hold for every environment."""

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
    # (external system, chain) pairs: a system named here is one chain's (or a few chains') and its
    # poll queue gets only their events, as in OPERA, where an external system is set up per chain;
    # a system not named gets every chain's events. Two subscriptions of one environment need
    # systems of their own (docs/poll-fallback.md, "Known limits").
    system_chains: tuple[tuple[str, str], ...] = ()
    # Environments 1, 2, ... beside environment 0 (the fields above): see `environment(i)`.
    environments: tuple[EnvironmentConfig, ...] = ()
    # False is ADVERSARIAL: a second subscriber for the same app key and chain is let through
    # instead of being closed with 4409, so that only the connection detector (GET /connections)
    # sees it. For testing what watches the one-connection rule, never for a relay's tests.
    one_connection_per_chain: bool = True

    def __post_init__(self) -> None:
        for name in ("port", "control_port"):
            _check_port(getattr(self, name), f"gateway {name.replace('_', ' ')}")
        _check_environment(
            "gateway",
            self.chains,
            self.hotels,
            self.first_offset,
            self.first_offsets,
            self.system_chains,
            self.external_systems,
        )
        for name in ("token_lifetime", "init_timeout", "server_ping_interval", "pong_timeout", "retention"):
            if getattr(self, name) <= 0:
                raise GatewayError(f"gateway {name.replace('_', ' ')} must be positive")
        for env in self.environments:
            if not isinstance(env, EnvironmentConfig):
                raise GatewayError("gateway environments must be EnvironmentConfig objects")
        ports = [self.control_port, *(self.environment(i).port for i in range(self.environment_count))]
        taken = [port for port in ports if port]
        if len(taken) != len(set(taken)):
            raise GatewayError("gateway environments and the control interface need ports of their own")
        seeds = [self.environment(i).seed for i in range(self.environment_count)]
        if len(seeds) != len(set(seeds)):
            raise GatewayError("gateway environments need seeds of their own (their event ids would repeat)")

    def first_offset_of(self, chain: str) -> int:
        return dict(self.first_offsets).get(chain, self.first_offset)

    @property
    def key_hash(self) -> str:
        return hashlib.sha256(self.app_key.encode()).hexdigest()

    @property
    def environment_count(self) -> int:
        return 1 + len(self.environments)

    def environment(self, index: int) -> EnvironmentConfig:
        """Environment `index` (0: this config's own fields), its seed resolved."""
        if not 0 <= index < self.environment_count:
            raise IndexError(f"the gateway has no environment {index} (0 to {self.environment_count - 1})")
        if index == 0:
            return EnvironmentConfig(
                **{name: getattr(self, name) for name in ENVIRONMENT_FIELDS}, seed=self.seed
            )
        env = self.environments[index - 1]
        return env if env.seed is not None else dataclasses.replace(env, seed=self.seed + index)

    def for_environment(self, index: int) -> GatewayConfig:
        """The single-environment config environment `index` runs with (what its endpoints read)."""
        if index == 0 and not self.environments:
            return self
        env = self.environment(index)
        assert env.seed is not None
        own = {name: getattr(env, name) for name in ENVIRONMENT_FIELDS}
        return dataclasses.replace(self, **own, seed=env.seed, environments=())


def fleet_config(
    environments: int,
    chains_per_environment: int,
    base: GatewayConfig | None = None,
    *,
    port_step: int = 10,
) -> GatewayConfig:
    """`base` (default: the defaults) with `environments` environments of `chains_per_environment`
    chains each. Environment 0 keeps `base`'s credentials; environment i > 0 gets its own
    (`local-client-<i>`, `local-secret-<i>`, `local-app-key-<i>`, `LOCALENT<i>`) and port
    `base.port + port_step * i` (any free port when `base.port` is 0). Chains are `ENV<i>CHAIN<nnn>`,
    except that one environment of one chain keeps `base` exactly as it is."""
    base = base or GatewayConfig()
    if environments < 1:
        raise GatewayError(f"the gateway needs at least one environment, not {environments}")
    if chains_per_environment < 1:
        raise GatewayError(f"an environment needs at least one chain, not {chains_per_environment}")
    if environments == 1 and chains_per_environment == 1:
        return base
    last_port = base.port + port_step * (environments - 1)
    if base.port and last_port > 65535:
        raise GatewayError(f"environment {environments - 1} would need port {last_port} (over 65535)")
    width = max(3, len(str(chains_per_environment)))

    def chains(index: int) -> tuple[str, ...]:
        return tuple(f"ENV{index}CHAIN{n:0{width}d}" for n in range(1, chains_per_environment + 1))

    more = tuple(
        EnvironmentConfig(
            port=base.port + port_step * i if base.port else 0,
            client_id=f"local-client-{i}",
            client_secret=f"local-secret-{i}",
            app_key=f"local-app-key-{i}",
            enterprise_id=f"LOCALENT{i}",
            chains=chains(i),
            hotels=base.hotels,
            external_systems=base.external_systems,
            first_offset=base.first_offset,
        )
        for i in range(1, environments)
    )
    return dataclasses.replace(
        base, chains=chains(0), approved_chains=None, first_offsets=(), system_chains=(), environments=more
    )


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


def _system_chains(pairs: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for system, chain in pairs:
        out.setdefault(system, []).append(chain)
    return out


def config_from_environment(config: GatewayConfig, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """`config` with `OHIP_LOCAL_FIRST_OFFSET` (when set) as every chain's first offset, in every
    environment."""
    env = os.environ if environ is None else environ
    text = env.get(FIRST_OFFSET_ENV, "").strip()
    if not text:
        return config
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        raise GatewayError(f"{FIRST_OFFSET_ENV} must be 1-20 digits (0 to {MAX_OFFSET})")
    offset = int(text)
    more = tuple(dataclasses.replace(env, first_offset=offset) for env in config.environments)
    return dataclasses.replace(config, first_offset=offset, environments=more)


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


class GatewayEnvironment:
    """One OPERA environment of a running gateway: its endpoints on a port of its own, its event
    source, token store and one-connection-per-chain rule. Nothing is shared between environments
    but the clock and the control interface."""

    def __init__(self, index: int, config: GatewayConfig, clock: Clock) -> None:
        from .poll import PollEndpoint
        from .rest import RestEndpoint
        from .streaming import StreamingEndpoint

        self.index = index
        self.config = config  # single-environment: GatewayConfig.for_environment(index)
        cfg = config
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
                system_chains=_system_chains(cfg.system_chains),
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
        self.app = app
        self.url = ""

    @property
    def source(self) -> EventSource:
        return self.context.source

    @property
    def tokens(self) -> TokenStore:
        return self.context.tokens

    @property
    def chains(self) -> tuple[str, ...]:
        return self.config.chains

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


class LocalGateway:
    """The gateway: one `GatewayEnvironment` per OPERA environment (each on its own port) and one
    control interface. The attributes without an environment in their name (`url`, `ws_url`,
    `context`, `source`, `tokens`, `streaming`, `poll`, `rest`, `oauth`, `emit`) are environment
    0's; `environment(i)` is environment i."""

    def __init__(self, config: GatewayConfig | None = None, *, clock: Clock = time.time) -> None:
        from .control import build_control_app

        self.config = config or GatewayConfig()
        cfg = self.config
        self.environments: tuple[GatewayEnvironment, ...] = tuple(
            GatewayEnvironment(i, cfg.for_environment(i), clock) for i in range(cfg.environment_count)
        )
        first = self.environments[0]
        self.context = first.context
        self.oauth = first.oauth
        self.streaming = first.streaming
        self.poll = first.poll
        self.rest = first.rest
        self._control_app = build_control_app(self.environments)
        self._runners: list[web.AppRunner] = []
        self.control_url = ""

    def environment(self, index: int) -> GatewayEnvironment:
        if not 0 <= index < len(self.environments):
            raise IndexError(f"the gateway has no environment {index} (0 to {len(self.environments) - 1})")
        return self.environments[index]

    @property
    def url(self) -> str:
        return self.environments[0].url

    @property
    def source(self) -> EventSource:
        return self.context.source

    @property
    def tokens(self) -> TokenStore:
        return self.context.tokens

    @property
    def ws_url(self) -> str:
        return self.environments[0].ws_url

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
        socks: list[socket.socket] = []
        try:
            for env in self.environments:
                what = "OHIP gateway" if env.index == 0 else f"OHIP gateway's environment {env.index}"
                socks.append(_bind(cfg.host, env.config.port, what))
            socks.append(_bind(cfg.host, cfg.control_port, "gateway control interface"))
        except GatewayError:
            for sock in socks:
                sock.close()
            raise
        apps = [env.app for env in self.environments] + [self._control_app]
        for app, sock in zip(apps, socks, strict=True):
            runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
            await runner.setup()
            await web.SockSite(runner, sock).start()
            self._runners.append(runner)
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        for env, sock in zip(self.environments, socks, strict=False):
            env.url = f"http://{host}:{sock.getsockname()[1]}"
        self.control_url = f"http://{host}:{socks[-1].getsockname()[1]}"

    async def stop(self) -> None:
        await asyncio.gather(*(env.streaming.shutdown() for env in self.environments))
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


def _chain_list(chains: Sequence[str]) -> str:
    return ",".join(chains) if len(chains) <= 4 else f"{chains[0]},{chains[1]},...,{chains[-1]}"


def _shell_range(chains: Sequence[str]) -> str:
    """`ENV1CHAIN{001..020}` when the chains are such a run (bash brace expansion keeps the
    zeros), else the codes one by one."""
    first, last = chains[0], chains[-1]
    stem = first.rstrip("0123456789")
    digits = len(first) - len(stem)
    expected = [f"{stem}{n:0{digits}d}" for n in range(1, len(chains) + 1)] if digits else []
    if len(chains) > 1 and list(chains) == expected:
        return f"{stem}{{{first[len(stem) :]}..{last[len(stem) :]}}}"
    return " ".join(f"'{c}'" for c in chains)


def describe(gw: LocalGateway) -> list[str]:
    """What `ohip-relay local gateway` prints once the gateway listens: with one environment of one
    chain, the `export` lines for a single-chain relay (as it always did); with more, a block of
    them per environment (paste one) and a hint for registering the chains of a fleet."""
    config = gw.config
    lines: list[str] = []
    if config.environment_count == 1 and len(config.chains) == 1:
        lines.append(f"local OHIP gateway on {gw.url} (control interface {gw.control_url})")
        if config.first_offset != FIRST_OFFSET:
            lines.append(f"offsets start at {config.first_offset} ({FIRST_OFFSET_ENV})")
        lines += _exports(gw.url, config)
        return lines
    n = config.environment_count
    counts = {len(env.chains) for env in gw.environments}
    count = counts.pop() if len(counts) == 1 else 0
    per_env = "chains as listed" if not count else f"{count} chain{'s' if count > 1 else ''}"
    per_env += " each" if count and n > 1 else ""
    lines.append(
        f"local OHIP gateway: {n} OPERA environment{'s' if n > 1 else ''}, {per_env} "
        f"(control interface {gw.control_url})"
    )
    if config.first_offset != FIRST_OFFSET:
        lines.append(f"offsets start at {config.first_offset} ({FIRST_OFFSET_ENV})")
    lines.append("exports per environment, for a single-chain relay on its first chain: paste one block")
    for env in gw.environments:
        lines.append("")
        lines.append(f"# environment {env.index}: {env.url}, chains {_chain_list(env.chains)}")
        lines += _exports(env.url, env.config)
    lines.append("")
    lines.append("# a fleet reads the chain registry: per environment, a secret (JSON below) and its chains")
    for env in gw.environments:
        cfg = env.config
        secret = json.dumps(
            {"clientId": cfg.client_id, "clientSecret": cfg.client_secret, "appKey": cfg.app_key}
        )
        lines.append(f"#   environment {env.index}, secret ARN{env.index} holding {secret}:")
        lines.append(
            f'#     for c in {_shell_range(cfg.chains)}; do ohip-relay chains add --chain-code "$c" '
            f"--gateway-url {env.url} --enterprise-id {cfg.enterprise_id} "
            f'--secret-arn "$ARN{env.index}"; done'
        )
    return lines


def _exports(url: str, config: GatewayConfig) -> list[str]:
    return [
        f"export OHIP_GATEWAY_URL={url}",
        f"export OHIP_CLIENT_ID={config.client_id}",
        f"export OHIP_CLIENT_SECRET={config.client_secret}",
        f"export OHIP_APP_KEY={config.app_key}",
        f"export OHIP_ENTERPRISE_ID={config.enterprise_id}",
        f"export OHIP_CHAIN_CODE={config.chains[0]}",
        f"export OHIP_HOTEL_IDS={','.join(config.hotels)}",
        f"export OHIP_EXTERNAL_SYSTEM={config.external_systems[0]}",
    ]


async def serve_forever(config: GatewayConfig) -> None:
    """Run a gateway until cancelled (Ctrl-C), printing where it listens and how to point the relay at it.
    `OHIP_LOCAL_FIRST_OFFSET` in the environment sets where the chains' offsets start."""
    config = config_from_environment(config)
    async with LocalGateway(config) as gw:
        for line in describe(gw):
            print(line)
        print("Ctrl-C to stop", flush=True)
        await asyncio.Event().wait()
