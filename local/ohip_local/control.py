"""The gateway's control interface (loopback only): how tests and the demo drive the gateway.

JSON in, JSON out. Bad input is a 400 `{"error": "...", "field": "<name>"}`.

Environments and chains. A gateway serves one or more OPERA environments (`GatewayConfig.
environments`), numbered from 0. Commands that act on one log or one chain take `environment`
(its number; default 0) and `chain` (one of that environment's chains; default its first).
Faults take them as filters: `environment` absent means every environment, `chain` absent every
chain (a `chain` must then be a chain of at least one environment the command applies to).
An answer names `environment` and `chain` only when the request did, so that a single-environment
caller sees the answers it always saw.

    POST /emit           {count: 1-100000 (default 1), rate: events/s (0: all at once), hotel?, chain?,
                          environment?, wait: bool (default true), adversarial?, missing_as?}
                         -> {count, first_offset, last_offset}
                         `adversarial`: a kind name or a list of them ("lookalike", "unicode",
                         "missing", "kind:variant", "all": adversarial.py); the events are drawn
                         from those kinds instead of the generator (lookalike groups are
                         appended at once; the last group may be cut short to fit `count`).
                         `missing_as`: "absent" | "null", how the Poll API shows missing fields.
    POST /offset-jump    {next: offset | skip: n >= 0, chain?, environment?} the next event gets
                         `next` (or skips `skip` offsets); never backwards
                         -> {chain, previous_next_offset, next_offset}
    POST /offset-reset   {next: offset, chain?, environment?} ADVERSARIAL: the chain's log is
                         numbered again from `next` (lower than before: offsets go backwards, as
                         after a reset on OHIP's side; the old log is no longer replayed)
                         -> {chain, previous_next_offset, next_offset, resets}
    POST /drop           {environment?, chain?} drop the streaming connections (those subscribed
                         to `chain`) without a close frame -> {dropped}
    POST /close          {code: 1000-4999, reason?, environment?, chain?} close the streaming
                         connections (those subscribed to `chain`) with `code` -> {closed}
    POST /stall-pongs    {enabled, environment?, chain?} stop (or resume) answering the client's
                         pings (with `chain`: on connections subscribed to it; `enabled: false`
                         without a chain resumes every chain) -> {enabled}
    POST /backpressure   {events, chain?, environment?} send the next `events` events (emitted on
                         the chain) in backpressure bursts -> {events}
    POST /expire-tokens  {close_connections: bool (default true), environment?} expire the
                         environment's tokens (every environment's when absent), close its
                         connections with 4401 -> {expired, closed}
    POST /approval       {chain, approved, environment?} the app's approval for a chain (4403
                         when not) -> {chain, approved}
    POST /poll-fault     {mode: 5xx|429|slow|off, status?, count?, delay?, retry_after?, environment?}
                         -> the fault
    POST /rest-fault     {mode: 5xx|429|off, status?, count?, retry_after?, environment?} REST
                         resources fault -> the fault
    POST /rest-delete    {kind: reservation|profile, id, hotel?, environment?} delete a resource
                         (GET: 404) -> {deleted}
    GET  /state          ?environment=N (default 0): that environment's chains, poll, streaming
                         and token counters, its `url`, and `environments` (how many there are)
    GET  /connections    ?environment=N&chain=C (both optional filters): the connection detector
                         -> {max_concurrent_subscribed, double_subscriptions, refusals_4409,
                             environments: [{environment, url, chains: {CHAIN: {connections,
                             subscribed, max_concurrent_subscribed, double_subscriptions,
                             refusals_4409, total_connections, handover_overlaps, moments}}}]}
                         Per environment and chain (the environment's app key): `connections`
                         sockets now open with a subscription on the chain, `subscribed` those
                         not closing; `max_concurrent_subscribed` the most sockets with a live
                         subscription at once, ever: above 1 must never happen (the gateway
                         refuses the second with 4409; `double_subscriptions` counts the times it
                         happened anyway and `moments` says when, on the gateway's clock, and
                         which connections); `refusals_4409` second clients refused (another was
                         connected, or the lockout ran); `total_connections` subscriptions
                         accepted; `handover_overlaps` subscriptions accepted while the chain's
                         previous socket was still being closed by the gateway (benign: that
                         socket gets nothing more). "No chain ever had two connections" is
                         `max_concurrent_subscribed <= 1`, and `refusals_4409 == 0` for "no
                         client even tried".

`ControlClient` (blocking) and `AsyncControlClient` call these endpoints and raise `ControlError`
on any non-2xx answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import httpx
from aiohttp import web

from .adversarial import AdversarialUnit
from .source import MAX_OFFSET, MISSING_STYLES, MissingAs, StoredEvent

if TYPE_CHECKING:
    from .gateway import GatewayContext, GatewayEnvironment

log = logging.getLogger(__name__)

MAX_EMIT = 100_000
_YIELD_EVERY = 500  # an unpaced emit lets the loop run (the streaming side sends) this often


class BadInput(Exception):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _bad(field: str, problem: str) -> web.Response:
    return web.json_response({"error": f"{field}: {problem}", "field": field}, status=400)


# -- input validation ------------------------------------------------------------------------------


def _int(
    body: Mapping[str, Any], name: str, default: int | None, low: int, high: int | None = None
) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(name, "must be an integer")
    if value < low or (high is not None and value > high):
        raise BadInput(
            name, f"must be from {low} to {high}" if high is not None else f"must be at least {low}"
        )
    return value


def _required_int(body: Mapping[str, Any], name: str, low: int, high: int | None = None) -> int:
    if body.get(name) is None:
        raise BadInput(name, "is required")
    value = _int(body, name, None, low, high)
    assert value is not None
    return value


def _number(body: Mapping[str, Any], name: str, default: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadInput(name, "must be a number")
    if value < 0:
        raise BadInput(name, "must not be negative")
    return float(value)


def _bool(body: Mapping[str, Any], name: str, default: bool | None) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise BadInput(name, "must be true or false" if name in body else "is required")
    return value


def _choice(
    body: Mapping[str, Any], name: str, allowed: tuple[str, ...], *, required: bool = False
) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise BadInput(name, "is required")
        return None
    if not isinstance(value, str) or value not in allowed:
        raise BadInput(name, f"must be one of {', '.join(allowed)}")
    return value


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    text = await request.text()
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        raise BadInput("body", "not JSON") from None
    if not isinstance(data, dict):
        raise BadInput("body", "must be a JSON object")
    return data


# -- environments and chains ---------------------------------------------------------------------


def _query(request: web.Request) -> dict[str, Any]:
    """A GET's query parameters as a body: `environment` as a number when it is digits."""
    query: dict[str, Any] = dict(request.query)
    value = query.get("environment")
    if isinstance(value, str) and value.isascii() and value.isdigit():
        query["environment"] = int(value)
    return query


def _index(value: Any, count: int, name: str = "environment") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(name, "must be an environment number")
    if not 0 <= value < count:
        raise BadInput(name, f"must be from 0 to {count - 1} (the gateway's environments)")
    return value


def _named(body: Mapping[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """`result` with the environment and chain the request named (only those it named: answers
    to requests that name none keep their single-environment shape)."""
    return {**result, **{k: body[k] for k in ("environment", "chain") if body.get(k) is not None}}


# -- the application -----------------------------------------------------------------------------


class _Control:
    def __init__(self, environments: Sequence[GatewayEnvironment]) -> None:
        self.environments = tuple(environments)
        self.tasks: set[asyncio.Task[None]] = set()

    def _one(self, body: Mapping[str, Any]) -> GatewayEnvironment:
        """The environment a command for one environment names (`environment`, default 0)."""
        value = body.get("environment")
        return self.environments[0 if value is None else _index(value, len(self.environments))]

    def _some(self, body: Mapping[str, Any]) -> tuple[GatewayEnvironment, ...]:
        """The environments a fault names: `environment`, or every one when absent."""
        if body.get("environment") is None:
            return self.environments
        return (self.environments[_index(body["environment"], len(self.environments))],)

    @staticmethod
    def _chain_of(
        body: Mapping[str, Any], envs: Sequence[GatewayEnvironment], *, required: bool = False
    ) -> str | None:
        """The `chain` filter: a chain of at least one of `envs` (None when absent)."""
        chain = body.get("chain")
        if chain is None:
            if required:
                raise BadInput("chain", "is required")
            return None
        known = [c for env in envs for c in env.chains]
        if not isinstance(chain, str) or chain not in known:
            where = "the environment" if len(envs) == 1 else "any environment"
            raise BadInput("chain", f"must be a chain of {where} ({_shorten(known)})")
        return chain

    @staticmethod
    def _having(envs: Sequence[GatewayEnvironment], chain: str | None) -> list[GatewayEnvironment]:
        return [env for env in envs if chain is None or chain in env.chains]

    # -- emit ----------------------------------------------------------------------------------

    async def emit(self, request: web.Request) -> web.Response:
        body = await _body(request)
        env = self._one(body)
        context = env.context
        cfg = env.config
        count = _int(body, "count", 1, 1, MAX_EMIT)
        assert count is not None
        rate = _number(body, "rate", 0.0)
        hotel = _choice(body, "hotel", cfg.hotels)
        chain = self._chain_of(body, (env,)) or cfg.chains[0]
        wait = _bool(body, "wait", True)
        missing_as = cast(MissingAs | None, _choice(body, "missing_as", MISSING_STYLES))
        kinds = body.get("adversarial")
        units: list[AdversarialUnit] | None = None
        if kinds is not None:
            if not isinstance(kinds, str | list) or not all(isinstance(k, str) for k in kinds):
                raise BadInput("adversarial", "must be a kind name or a list of kind names")
            try:  # drawn now, so that the draws follow the order of the calls
                units = context.adversarial_units(count, kinds, hotel=hotel, missing_as=missing_as)
            except ValueError as exc:
                raise BadInput("adversarial", str(exc)) from None
        elif missing_as is not None:
            raise BadInput("missing_as", "applies to adversarial emits only")
        if wait:
            emitted = await self._emit(context, count, rate, hotel, chain, units)
            return web.json_response(
                {"count": len(emitted), "first_offset": emitted[0].offset, "last_offset": emitted[-1].offset}
            )
        # In the background: 202 with the offsets the events will get unless another emission on
        # the same chain interleaves (the first one is always exact when nothing else is running).
        first = context.source.next_offset(chain)
        task = asyncio.get_running_loop().create_task(
            self._background(context, count, rate, hotel, chain, units)
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return web.json_response(
            {"count": count, "first_offset": first, "last_offset": first + count - 1}, status=202
        )

    async def _background(
        self,
        context: GatewayContext,
        count: int,
        rate: float,
        hotel: str | None,
        chain: str,
        units: list[AdversarialUnit] | None,
    ) -> None:
        try:
            await self._emit(context, count, rate, hotel, chain, units)
        except Exception:
            log.exception("background emit failed")

    async def _emit(
        self,
        context: GatewayContext,
        count: int,
        rate: float,
        hotel: str | None,
        chain: str,
        units: list[AdversarialUnit] | None = None,
    ) -> list[StoredEvent]:
        """Append `count` events, `rate` per second (paced by the loop's monotonic clock); with
        `units` (adversarial), those units' events, each unit appended at once."""
        if units is not None:
            return await self._emit_units(context, units, rate, chain)
        emitted: list[StoredEvent] = []
        if rate <= 0:
            while len(emitted) < count:
                batch = min(_YIELD_EVERY, count - len(emitted))
                emitted += context.emit(batch, hotel=hotel, chain=chain)
                if len(emitted) < count:
                    await asyncio.sleep(0)
            return emitted
        loop = asyncio.get_running_loop()
        start = loop.time()
        while len(emitted) < count:
            due = min(count, int((loop.time() - start) * rate) + 1)
            if due > len(emitted):
                emitted += context.emit(due - len(emitted), hotel=hotel, chain=chain)
            if len(emitted) < count:
                next_due = start + len(emitted) / rate
                await asyncio.sleep(max(0.0, next_due - loop.time()))
        return emitted

    @staticmethod
    async def _emit_units(
        context: GatewayContext, units: list[AdversarialUnit], rate: float, chain: str
    ) -> list[StoredEvent]:
        emitted: list[StoredEvent] = []
        loop = asyncio.get_running_loop()
        start = loop.time()
        for n, unit in enumerate(units):
            if rate > 0:
                await asyncio.sleep(max(0.0, start + len(emitted) / rate - loop.time()))
            elif n and n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            emitted += context.append_unit(chain, unit)
        return emitted

    # -- offsets -------------------------------------------------------------------------------

    async def offset_jump(self, request: web.Request) -> web.Response:
        body = await _body(request)
        env = self._one(body)
        chain = self._chain_of(body, (env,)) or env.chains[0]
        source = env.source
        if (body.get("next") is None) == (body.get("skip") is None):
            raise BadInput("next", "give either next (an offset) or skip (a count)")
        if body.get("next") is not None:
            target = _int(body, "next", None, 0, MAX_OFFSET)
        else:
            skip = _int(body, "skip", None, 0, MAX_OFFSET)
            assert skip is not None
            target = source.next_offset(chain) + skip
        assert target is not None
        if target < source.next_offset(chain):
            raise BadInput(
                "next",
                f"must not be below the next offset {source.next_offset(chain)} "
                "(offsets only increase; POST /offset-reset to make them go backwards)",
            )
        try:
            previous = source.jump_offset(chain, target)
        except ValueError as exc:
            raise BadInput("next", str(exc)) from None
        return web.json_response(
            _named(body, {"chain": chain, "previous_next_offset": previous, "next_offset": target})
        )

    async def offset_reset(self, request: web.Request) -> web.Response:
        body = await _body(request)
        env = self._one(body)
        chain = self._chain_of(body, (env,)) or env.chains[0]
        target = _required_int(body, "next", 0, MAX_OFFSET)
        source = env.source
        previous = source.reset_offset(chain, target)
        log.warning(
            "control: offsets of %s (environment %d) reset from %d to %d (adversarial)",
            chain,
            env.index,
            previous,
            target,
        )
        return web.json_response(
            _named(
                body,
                {
                    "chain": chain,
                    "previous_next_offset": previous,
                    "next_offset": target,
                    "resets": source.resets(chain),
                },
            )
        )

    # -- streaming -----------------------------------------------------------------------------

    async def drop(self, request: web.Request) -> web.Response:
        body = await _body(request)
        envs = self._some(body)
        chain = self._chain_of(body, envs)
        dropped = 0
        for env in self._having(envs, chain):
            dropped += await env.streaming.drop_all(chain)
        return web.json_response(_named(body, {"dropped": dropped}))

    async def close(self, request: web.Request) -> web.Response:
        body = await _body(request)
        envs = self._some(body)
        chain = self._chain_of(body, envs)
        code = _required_int(body, "code", 1000, 4999)
        reason = body.get("reason", "")
        if not isinstance(reason, str):
            raise BadInput("reason", "must be a string")
        if len(reason.encode("utf-8")) > 123:
            raise BadInput("reason", "must be at most 123 bytes in UTF-8 (a WebSocket close frame)")
        closed = 0
        for env in self._having(envs, chain):
            closed += await env.streaming.close_all(code, reason, chain=chain)
        return web.json_response(_named(body, {"closed": closed}))

    async def stall_pongs(self, request: web.Request) -> web.Response:
        body = await _body(request)
        envs = self._some(body)
        chain = self._chain_of(body, envs)
        enabled = _bool(body, "enabled", None)
        for env in self._having(envs, chain):
            env.streaming.set_stall_pongs(enabled, chain=chain)
        return web.json_response(_named(body, {"enabled": enabled}))

    async def backpressure(self, request: web.Request) -> web.Response:
        body = await _body(request)
        env = self._one(body)
        chain = self._chain_of(body, (env,))
        events = _required_int(body, "events", 1, MAX_EMIT)
        env.streaming.start_backpressure(events, chain=chain)
        return web.json_response(_named(body, {"events": events}))

    async def expire_tokens(self, request: web.Request) -> web.Response:
        body = await _body(request)
        envs = self._some(body)
        if body.get("chain") is not None:
            raise BadInput("chain", "tokens belong to an environment, not to a chain")
        close = _bool(body, "close_connections", True)
        expired = closed = 0
        for env in envs:
            expired += env.tokens.expire_all()
            closed += await env.streaming.close_expired() if close else 0
        return web.json_response(_named(body, {"expired": expired, "closed": closed}))

    async def approval(self, request: web.Request) -> web.Response:
        body = await _body(request)
        env = self._one(body)
        chain = self._chain_of(body, (env,), required=True)
        assert chain is not None
        approved = _bool(body, "approved", None)
        env.context.approvals[chain] = approved
        return web.json_response(_named(body, {"chain": chain, "approved": approved}))

    # -- poll ----------------------------------------------------------------------------------

    async def poll_fault(self, request: web.Request) -> web.Response:
        from .poll import FAULT_MODES

        body = await _body(request)
        envs = self._some(body)
        mode = _choice(body, "mode", FAULT_MODES, required=True)
        assert mode is not None
        status = _int(body, "status", 503, 500, 599) if mode == "5xx" else 429
        assert status is not None
        count = _int(body, "count", None, 1)
        delay = _number(body, "delay", 0.0)
        retry_after = _int(body, "retry_after", None, 0)
        faults = [
            env.poll.set_fault(mode, status=status, count=count, delay=delay, retry_after=retry_after)
            for env in envs
        ]
        return web.json_response(_named(body, faults[0]))

    # -- REST resources --------------------------------------------------------------------------

    async def rest_fault(self, request: web.Request) -> web.Response:
        from .rest import FAULT_MODES

        body = await _body(request)
        envs = self._some(body)
        mode = _choice(body, "mode", FAULT_MODES, required=True)
        assert mode is not None
        status = _int(body, "status", 503, 500, 599) if mode == "5xx" else 429
        assert status is not None
        count = _int(body, "count", None, 1)
        retry_after = _int(body, "retry_after", None, 0)
        faults = [
            env.rest.set_fault(mode, status=status, count=count, retry_after=retry_after) for env in envs
        ]
        return web.json_response(_named(body, faults[0]))

    async def rest_delete(self, request: web.Request) -> web.Response:
        body = await _body(request)
        env = self._one(body)
        kind = _choice(body, "kind", ("reservation", "profile"), required=True)
        assert kind is not None
        key = body.get("id")
        if not isinstance(key, str) or not key:
            raise BadInput("id", "is required (a string)")
        hotel = _choice(body, "hotel", env.config.hotels, required=kind == "reservation")
        return web.json_response(_named(body, {"deleted": env.rest.delete(kind, key, hotel)}))

    # -- state ---------------------------------------------------------------------------------

    async def state(self, request: web.Request) -> web.Response:
        env = self._one(_query(request))
        ctx = env.context
        source = ctx.source
        chains = {
            chain: {
                "highest": source.highest(chain),
                "next_offset": source.next_offset(chain),
                "events": source.event_count(chain),
                "approved": ctx.approved(chain),
                "resets": source.resets(chain),
            }
            for chain in source.chains
        }
        poll = {
            **env.poll.snapshot(),
            "queued": {code: source.queued(code) for code in source.external_systems},
        }
        return web.json_response(
            {
                "environment": env.index,
                "environments": len(self.environments),
                "url": env.url,
                "chains": chains,
                "poll": poll,
                "streaming": env.streaming.snapshot(),
                "rest": env.rest.snapshot(),
                "tokens_issued": ctx.tokens.issued,
                "background_emits": len(self.tasks),
            }
        )

    async def connections(self, request: web.Request) -> web.Response:
        query = _query(request)
        envs = self._some(query)
        chain = self._chain_of(query, envs)
        reports: list[dict[str, Any]] = []
        entries: list[dict[str, Any]] = []
        for env in self._having(envs, chain):
            report = env.streaming.connection_report(None if chain is None else (chain,))
            reports.append({"environment": env.index, "url": env.url, "chains": report})
            entries += report.values()
        return web.json_response(
            {
                "max_concurrent_subscribed": max(
                    (e["max_concurrent_subscribed"] for e in entries), default=0
                ),
                "double_subscriptions": sum(e["double_subscriptions"] for e in entries),
                "refusals_4409": sum(e["refusals_4409"] for e in entries),
                "environments": reports,
            }
        )

    async def on_cleanup(self, app: web.Application) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _shorten(chains: Sequence[str]) -> str:
    return ", ".join(chains) if len(chains) <= 5 else f"{', '.join(chains[:3])}, ... {len(chains)} chains"


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return cast(web.StreamResponse, await handler(request))
    except BadInput as exc:
        return _bad(exc.field, exc.problem)
    except ValueError as exc:  # a validation rule of the component itself
        return web.json_response({"error": str(exc), "field": "body"}, status=400)


def build_control_app(environments: Sequence[GatewayEnvironment]) -> web.Application:
    control = _Control(environments)
    app = web.Application(middlewares=[_errors])
    app.router.add_post("/emit", control.emit)
    app.router.add_post("/offset-jump", control.offset_jump)
    app.router.add_post("/offset-reset", control.offset_reset)
    app.router.add_post("/drop", control.drop)
    app.router.add_post("/close", control.close)
    app.router.add_post("/stall-pongs", control.stall_pongs)
    app.router.add_post("/backpressure", control.backpressure)
    app.router.add_post("/expire-tokens", control.expire_tokens)
    app.router.add_post("/approval", control.approval)
    app.router.add_post("/poll-fault", control.poll_fault)
    app.router.add_post("/rest-fault", control.rest_fault)
    app.router.add_post("/rest-delete", control.rest_delete)
    app.router.add_get("/state", control.state)
    app.router.add_get("/connections", control.connections)
    app.on_cleanup.append(control.on_cleanup)
    return app


# -- clients -----------------------------------------------------------------------------------------


class ControlError(RuntimeError):
    """The control interface refused a command (or could not be reached)."""


def _payload(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _result(method: str, path: str, response: httpx.Response) -> dict[str, Any]:
    if not response.is_success:
        try:
            detail = str(response.json().get("error", response.text))
        except (ValueError, AttributeError):
            detail = response.text[:200]
        raise ControlError(f"control {method} {path} failed: {response.status_code} {detail}".strip())
    try:
        data = response.json()
    except ValueError:
        raise ControlError(f"control {method} {path} answered something that is not JSON") from None
    return cast(dict[str, Any], data)


class _Commands:
    """The commands, as the bodies (or query parameters) both clients send."""

    @staticmethod
    def emit(
        count: int,
        rate: float,
        hotel: str | None,
        chain: str | None,
        wait: bool,
        adversarial: str | Sequence[str] | None = None,
        missing_as: str | None = None,
        environment: int | None = None,
    ) -> dict[str, Any]:
        kinds = adversarial if adversarial is None or isinstance(adversarial, str) else list(adversarial)
        return _payload(
            count=count,
            rate=rate,
            hotel=hotel,
            chain=chain,
            wait=wait,
            adversarial=kinds,
            missing_as=missing_as,
            environment=environment,
        )

    @staticmethod
    def offset_jump(
        next_offset: int | None, skip: int | None, chain: str | None, environment: int | None
    ) -> dict[str, Any]:
        if (next_offset is None) == (skip is None):
            raise TypeError("offset_jump() takes either next_offset or skip")
        body: dict[str, Any] = {"next": next_offset} if next_offset is not None else {"skip": skip}
        return {**body, **_payload(chain=chain, environment=environment)}

    @staticmethod
    def offset_reset(next_offset: int, chain: str | None, environment: int | None) -> dict[str, Any]:
        return {"next": next_offset, **_payload(chain=chain, environment=environment)}

    @staticmethod
    def poll_fault(mode: str, kw: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(kw) - {"status", "count", "delay", "retry_after", "environment"}
        if unknown:
            raise TypeError(f"poll_fault() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
        return {"mode": mode, **kw}

    @staticmethod
    def rest_fault(mode: str, kw: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(kw) - {"status", "count", "retry_after", "environment"}
        if unknown:
            raise TypeError(f"rest_fault() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
        return {"mode": mode, **kw}

    @staticmethod
    def rest_delete(kind: str, key: str, hotel: str | None, environment: int | None) -> dict[str, Any]:
        return {"kind": kind, "id": key, **_payload(hotel=hotel, environment=environment)}

    @staticmethod
    def query(environment: int | None = None, chain: str | None = None) -> dict[str, Any] | None:
        params = _payload(environment=environment, chain=chain)
        return {k: str(v) for k, v in params.items()} or None


class ControlClient:
    """Blocking client of the control interface (a fresh connection per command).

    `environment` (an index) and `chain` name what a command applies to, as the endpoints
    describe; None leaves them out (environment 0, or every environment for a fault)."""

    def __init__(self, control_url: str, *, timeout: float = 30.0) -> None:
        self.control_url = control_url.rstrip("/")
        self.timeout = timeout

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        try:
            with httpx.Client(base_url=self.control_url, timeout=self.timeout, trust_env=False) as http:
                if body is not None:
                    response = http.request(method, path, json=body, params=params)
                else:
                    response = http.request(method, path, params=params)
        except httpx.HTTPError as exc:
            raise ControlError(f"control {method} {path} failed: {type(exc).__name__}") from exc
        return _result(method, path, response)

    def emit(
        self,
        count: int,
        *,
        rate: float = 0,
        hotel: str | None = None,
        chain: str | None = None,
        wait: bool = True,
        adversarial: str | Sequence[str] | None = None,
        missing_as: str | None = None,
        environment: int | None = None,
    ) -> dict[str, Any]:
        """`adversarial`: kinds to draw from instead of the generator (see POST /emit)."""
        body = _Commands.emit(count, rate, hotel, chain, wait, adversarial, missing_as, environment)
        return self._call("POST", "/emit", body)

    def offset_jump(
        self,
        next_offset: int | None = None,
        *,
        skip: int | None = None,
        chain: str | None = None,
        environment: int | None = None,
    ) -> dict[str, Any]:
        """The next event gets `next_offset` (or skips `skip` offsets); never backwards."""
        body = _Commands.offset_jump(next_offset, skip, chain, environment)
        return self._call("POST", "/offset-jump", body)

    def offset_reset(
        self, next_offset: int, *, chain: str | None = None, environment: int | None = None
    ) -> dict[str, Any]:
        """Adversarial: offsets go back to `next_offset`, as after a reset on OHIP's side."""
        return self._call("POST", "/offset-reset", _Commands.offset_reset(next_offset, chain, environment))

    def drop(self, *, chain: str | None = None, environment: int | None = None) -> dict[str, Any]:
        return self._call("POST", "/drop", _payload(chain=chain, environment=environment))

    def close(
        self, code: int, reason: str = "", *, chain: str | None = None, environment: int | None = None
    ) -> dict[str, Any]:
        body = {"code": code, "reason": reason, **_payload(chain=chain, environment=environment)}
        return self._call("POST", "/close", body)

    def stall_pongs(
        self, enabled: bool, *, chain: str | None = None, environment: int | None = None
    ) -> dict[str, Any]:
        body = {"enabled": enabled, **_payload(chain=chain, environment=environment)}
        return self._call("POST", "/stall-pongs", body)

    def backpressure(
        self, events: int, *, chain: str | None = None, environment: int | None = None
    ) -> dict[str, Any]:
        body = {"events": events, **_payload(chain=chain, environment=environment)}
        return self._call("POST", "/backpressure", body)

    def expire_tokens(
        self, close_connections: bool = True, *, environment: int | None = None
    ) -> dict[str, Any]:
        body = {"close_connections": close_connections, **_payload(environment=environment)}
        return self._call("POST", "/expire-tokens", body)

    def approval(self, chain: str, approved: bool, *, environment: int | None = None) -> dict[str, Any]:
        body = {"chain": chain, "approved": approved, **_payload(environment=environment)}
        return self._call("POST", "/approval", body)

    def poll_fault(self, mode: str, **kw: Any) -> dict[str, Any]:
        return self._call("POST", "/poll-fault", _Commands.poll_fault(mode, kw))

    def rest_fault(self, mode: str, **kw: Any) -> dict[str, Any]:
        return self._call("POST", "/rest-fault", _Commands.rest_fault(mode, kw))

    def rest_delete(
        self, kind: str, key: str, hotel: str | None = None, *, environment: int | None = None
    ) -> dict[str, Any]:
        return self._call("POST", "/rest-delete", _Commands.rest_delete(kind, key, hotel, environment))

    def state(self, *, environment: int | None = None) -> dict[str, Any]:
        return self._call("GET", "/state", params=_Commands.query(environment))

    def connections(self, *, environment: int | None = None, chain: str | None = None) -> dict[str, Any]:
        """The connection detector (GET /connections)."""
        return self._call("GET", "/connections", params=_Commands.query(environment, chain))


class AsyncControlClient:
    """Asynchronous client of the control interface (a fresh connection per command); the same
    commands as `ControlClient`."""

    def __init__(self, control_url: str, *, timeout: float = 30.0) -> None:
        self.control_url = control_url.rstrip("/")
        self.timeout = timeout

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(
                base_url=self.control_url, timeout=self.timeout, trust_env=False
            ) as http:
                if body is not None:
                    response = await http.request(method, path, json=body, params=params)
                else:
                    response = await http.request(method, path, params=params)
        except httpx.HTTPError as exc:
            raise ControlError(f"control {method} {path} failed: {type(exc).__name__}") from exc
        return _result(method, path, response)

    async def emit(
        self,
        count: int,
        *,
        rate: float = 0,
        hotel: str | None = None,
        chain: str | None = None,
        wait: bool = True,
        adversarial: str | Sequence[str] | None = None,
        missing_as: str | None = None,
        environment: int | None = None,
    ) -> dict[str, Any]:
        """`adversarial`: kinds to draw from instead of the generator (see POST /emit)."""
        body = _Commands.emit(count, rate, hotel, chain, wait, adversarial, missing_as, environment)
        return await self._call("POST", "/emit", body)

    async def offset_jump(
        self,
        next_offset: int | None = None,
        *,
        skip: int | None = None,
        chain: str | None = None,
        environment: int | None = None,
    ) -> dict[str, Any]:
        """The next event gets `next_offset` (or skips `skip` offsets); never backwards."""
        body = _Commands.offset_jump(next_offset, skip, chain, environment)
        return await self._call("POST", "/offset-jump", body)

    async def offset_reset(
        self, next_offset: int, *, chain: str | None = None, environment: int | None = None
    ) -> dict[str, Any]:
        """Adversarial: offsets go back to `next_offset`, as after a reset on OHIP's side."""
        body = _Commands.offset_reset(next_offset, chain, environment)
        return await self._call("POST", "/offset-reset", body)

    async def drop(self, *, chain: str | None = None, environment: int | None = None) -> dict[str, Any]:
        return await self._call("POST", "/drop", _payload(chain=chain, environment=environment))

    async def close(
        self, code: int, reason: str = "", *, chain: str | None = None, environment: int | None = None
    ) -> dict[str, Any]:
        body = {"code": code, "reason": reason, **_payload(chain=chain, environment=environment)}
        return await self._call("POST", "/close", body)

    async def stall_pongs(
        self, enabled: bool, *, chain: str | None = None, environment: int | None = None
    ) -> dict[str, Any]:
        body = {"enabled": enabled, **_payload(chain=chain, environment=environment)}
        return await self._call("POST", "/stall-pongs", body)

    async def backpressure(
        self, events: int, *, chain: str | None = None, environment: int | None = None
    ) -> dict[str, Any]:
        body = {"events": events, **_payload(chain=chain, environment=environment)}
        return await self._call("POST", "/backpressure", body)

    async def expire_tokens(
        self, close_connections: bool = True, *, environment: int | None = None
    ) -> dict[str, Any]:
        body = {"close_connections": close_connections, **_payload(environment=environment)}
        return await self._call("POST", "/expire-tokens", body)

    async def approval(self, chain: str, approved: bool, *, environment: int | None = None) -> dict[str, Any]:
        body = {"chain": chain, "approved": approved, **_payload(environment=environment)}
        return await self._call("POST", "/approval", body)

    async def poll_fault(self, mode: str, **kw: Any) -> dict[str, Any]:
        return await self._call("POST", "/poll-fault", _Commands.poll_fault(mode, kw))

    async def rest_fault(self, mode: str, **kw: Any) -> dict[str, Any]:
        return await self._call("POST", "/rest-fault", _Commands.rest_fault(mode, kw))

    async def rest_delete(
        self, kind: str, key: str, hotel: str | None = None, *, environment: int | None = None
    ) -> dict[str, Any]:
        body = _Commands.rest_delete(kind, key, hotel, environment)
        return await self._call("POST", "/rest-delete", body)

    async def state(self, *, environment: int | None = None) -> dict[str, Any]:
        return await self._call("GET", "/state", params=_Commands.query(environment))

    async def connections(
        self, *, environment: int | None = None, chain: str | None = None
    ) -> dict[str, Any]:
        """The connection detector (GET /connections)."""
        return await self._call("GET", "/connections", params=_Commands.query(environment, chain))
