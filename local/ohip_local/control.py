"""The gateway's control interface (loopback only): how tests and the demo drive the gateway.

JSON in, JSON out. Bad input is a 400 `{"error": "...", "field": "<name>"}`.

    POST /emit           {count: 1-100000 (default 1), rate: events/s (0: all at once), hotel?, chain?,
                          wait: bool (default true), adversarial?, missing_as?}
                         -> {count, first_offset, last_offset}
                         `adversarial`: a kind name or a list of them ("lookalike", "unicode",
                         "missing", "kind:variant", "all": adversarial.py); the events are drawn
                         from those kinds instead of the generator (lookalike groups are
                         appended at once; the last group may be cut short to fit `count`).
                         `missing_as`: "absent" | "null", how the Poll API shows missing fields.
    POST /offset-jump    {next: offset | skip: n >= 0, chain?} the next event gets `next` (or skips
                         `skip` offsets); never backwards -> {chain, previous_next_offset, next_offset}
    POST /offset-reset   {next: offset, chain?} ADVERSARIAL: the chain's log is numbered again from
                         `next` (lower than before: offsets go backwards, as after a reset on OHIP's
                         side; the old log is no longer replayed) -> {chain, previous_next_offset,
                         next_offset, resets}
    POST /drop           drop every streaming connection without a close frame -> {dropped}
    POST /close          {code: 1000-4999, reason?} close every streaming connection -> {closed}
    POST /stall-pongs    {enabled} stop (or resume) answering the client's pings -> {enabled}
    POST /backpressure   {events} send the next `events` events in backpressure bursts -> {events}
    POST /expire-tokens  {close_connections: bool (default true)} -> {expired, closed}
    POST /approval       {chain, approved} the app's approval for a chain (4403 when not) -> {chain, approved}
    POST /poll-fault     {mode: 5xx|429|slow|off, status?, count?, delay?, retry_after?} -> the fault
    POST /rest-fault     {mode: 5xx|429|off, status?, count?, retry_after?} REST resources fault -> the fault
    POST /rest-delete    {kind: reservation|profile, id, hotel?} delete a resource (GET: 404) -> {deleted}
    GET  /state          chains, poll, streaming and token counters

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
    from .gateway import GatewayContext
    from .poll import PollEndpoint
    from .rest import RestEndpoint
    from .streaming import StreamingEndpoint

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


# -- the application -----------------------------------------------------------------------------


class _Control:
    def __init__(
        self,
        context: GatewayContext,
        streaming: StreamingEndpoint,
        poll: PollEndpoint,
        rest: RestEndpoint | None = None,
    ) -> None:
        self.context = context
        self.streaming = streaming
        self.poll = poll
        self.rest = rest
        self.tasks: set[asyncio.Task[None]] = set()

    # -- emit ----------------------------------------------------------------------------------

    async def emit(self, request: web.Request) -> web.Response:
        cfg = self.context.config
        body = await _body(request)
        count = _int(body, "count", 1, 1, MAX_EMIT)
        assert count is not None
        rate = _number(body, "rate", 0.0)
        hotel = _choice(body, "hotel", cfg.hotels)
        chain = _choice(body, "chain", cfg.chains) or cfg.chains[0]
        wait = _bool(body, "wait", True)
        missing_as = cast(MissingAs | None, _choice(body, "missing_as", MISSING_STYLES))
        kinds = body.get("adversarial")
        units: list[AdversarialUnit] | None = None
        if kinds is not None:
            if not isinstance(kinds, str | list) or not all(isinstance(k, str) for k in kinds):
                raise BadInput("adversarial", "must be a kind name or a list of kind names")
            try:  # drawn now, so that the draws follow the order of the calls
                units = self.context.adversarial_units(count, kinds, hotel=hotel, missing_as=missing_as)
            except ValueError as exc:
                raise BadInput("adversarial", str(exc)) from None
        elif missing_as is not None:
            raise BadInput("missing_as", "applies to adversarial emits only")
        if wait:
            emitted = await self._emit(count, rate, hotel, chain, units)
            return web.json_response(
                {"count": len(emitted), "first_offset": emitted[0].offset, "last_offset": emitted[-1].offset}
            )
        # In the background: 202 with the offsets the events will get unless another emission on
        # the same chain interleaves (the first one is always exact when nothing else is running).
        first = self.context.source.next_offset(chain)
        task = asyncio.get_running_loop().create_task(self._background(count, rate, hotel, chain, units))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return web.json_response(
            {"count": count, "first_offset": first, "last_offset": first + count - 1}, status=202
        )

    async def _background(
        self, count: int, rate: float, hotel: str | None, chain: str, units: list[AdversarialUnit] | None
    ) -> None:
        try:
            await self._emit(count, rate, hotel, chain, units)
        except Exception:
            log.exception("background emit failed")

    async def _emit(
        self,
        count: int,
        rate: float,
        hotel: str | None,
        chain: str,
        units: list[AdversarialUnit] | None = None,
    ) -> list[StoredEvent]:
        """Append `count` events, `rate` per second (paced by the loop's monotonic clock); with
        `units` (adversarial), those units' events, each unit appended at once."""
        if units is not None:
            return await self._emit_units(units, rate, chain)
        emitted: list[StoredEvent] = []
        if rate <= 0:
            while len(emitted) < count:
                batch = min(_YIELD_EVERY, count - len(emitted))
                emitted += self.context.emit(batch, hotel=hotel, chain=chain)
                if len(emitted) < count:
                    await asyncio.sleep(0)
            return emitted
        loop = asyncio.get_running_loop()
        start = loop.time()
        while len(emitted) < count:
            due = min(count, int((loop.time() - start) * rate) + 1)
            if due > len(emitted):
                emitted += self.context.emit(due - len(emitted), hotel=hotel, chain=chain)
            if len(emitted) < count:
                next_due = start + len(emitted) / rate
                await asyncio.sleep(max(0.0, next_due - loop.time()))
        return emitted

    async def _emit_units(self, units: list[AdversarialUnit], rate: float, chain: str) -> list[StoredEvent]:
        emitted: list[StoredEvent] = []
        loop = asyncio.get_running_loop()
        start = loop.time()
        for n, unit in enumerate(units):
            if rate > 0:
                await asyncio.sleep(max(0.0, start + len(emitted) / rate - loop.time()))
            elif n and n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            emitted += self.context.append_unit(chain, unit)
        return emitted

    # -- offsets -------------------------------------------------------------------------------

    async def offset_jump(self, request: web.Request) -> web.Response:
        cfg = self.context.config
        body = await _body(request)
        chain = _choice(body, "chain", cfg.chains) or cfg.chains[0]
        source = self.context.source
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
        return web.json_response({"chain": chain, "previous_next_offset": previous, "next_offset": target})

    async def offset_reset(self, request: web.Request) -> web.Response:
        cfg = self.context.config
        body = await _body(request)
        chain = _choice(body, "chain", cfg.chains) or cfg.chains[0]
        target = _required_int(body, "next", 0, MAX_OFFSET)
        source = self.context.source
        previous = source.reset_offset(chain, target)
        log.warning("control: offsets of %s reset from %d to %d (adversarial)", chain, previous, target)
        return web.json_response(
            {
                "chain": chain,
                "previous_next_offset": previous,
                "next_offset": target,
                "resets": source.resets(chain),
            }
        )

    # -- streaming -----------------------------------------------------------------------------

    async def drop(self, request: web.Request) -> web.Response:
        await _body(request)
        return web.json_response({"dropped": await self.streaming.drop_all()})

    async def close(self, request: web.Request) -> web.Response:
        body = await _body(request)
        code = _required_int(body, "code", 1000, 4999)
        reason = body.get("reason", "")
        if not isinstance(reason, str):
            raise BadInput("reason", "must be a string")
        if len(reason.encode("utf-8")) > 123:
            raise BadInput("reason", "must be at most 123 bytes in UTF-8 (a WebSocket close frame)")
        return web.json_response({"closed": await self.streaming.close_all(code, reason)})

    async def stall_pongs(self, request: web.Request) -> web.Response:
        enabled = _bool(await _body(request), "enabled", None)
        self.streaming.set_stall_pongs(enabled)
        return web.json_response({"enabled": enabled})

    async def backpressure(self, request: web.Request) -> web.Response:
        events = _required_int(await _body(request), "events", 1, MAX_EMIT)
        self.streaming.start_backpressure(events)
        return web.json_response({"events": events})

    async def expire_tokens(self, request: web.Request) -> web.Response:
        close = _bool(await _body(request), "close_connections", True)
        expired = self.context.tokens.expire_all()
        closed = await self.streaming.close_expired() if close else 0
        return web.json_response({"expired": expired, "closed": closed})

    async def approval(self, request: web.Request) -> web.Response:
        body = await _body(request)
        chain = _choice(body, "chain", self.context.config.chains, required=True)
        assert chain is not None
        approved = _bool(body, "approved", None)
        self.context.approvals[chain] = approved
        return web.json_response({"chain": chain, "approved": approved})

    # -- poll ----------------------------------------------------------------------------------

    async def poll_fault(self, request: web.Request) -> web.Response:
        from .poll import FAULT_MODES

        body = await _body(request)
        mode = _choice(body, "mode", FAULT_MODES, required=True)
        assert mode is not None
        status = _int(body, "status", 503, 500, 599) if mode == "5xx" else 429
        assert status is not None
        count = _int(body, "count", None, 1)
        delay = _number(body, "delay", 0.0)
        retry_after = _int(body, "retry_after", None, 0)
        return web.json_response(
            self.poll.set_fault(mode, status=status, count=count, delay=delay, retry_after=retry_after)
        )

    # -- REST resources --------------------------------------------------------------------------

    async def rest_fault(self, request: web.Request) -> web.Response:
        from .rest import FAULT_MODES

        assert self.rest is not None
        body = await _body(request)
        mode = _choice(body, "mode", FAULT_MODES, required=True)
        assert mode is not None
        status = _int(body, "status", 503, 500, 599) if mode == "5xx" else 429
        assert status is not None
        count = _int(body, "count", None, 1)
        retry_after = _int(body, "retry_after", None, 0)
        return web.json_response(
            self.rest.set_fault(mode, status=status, count=count, retry_after=retry_after)
        )

    async def rest_delete(self, request: web.Request) -> web.Response:
        assert self.rest is not None
        body = await _body(request)
        kind = _choice(body, "kind", ("reservation", "profile"), required=True)
        assert kind is not None
        key = body.get("id")
        if not isinstance(key, str) or not key:
            raise BadInput("id", "is required (a string)")
        hotel = _choice(body, "hotel", self.context.config.hotels, required=kind == "reservation")
        return web.json_response({"deleted": self.rest.delete(kind, key, hotel)})

    # -- state ---------------------------------------------------------------------------------

    async def state(self, request: web.Request) -> web.Response:
        ctx = self.context
        source = ctx.source
        chains = {
            chain: {
                "highest": source.highest(chain),
                "next_offset": source.next_offset(chain),
                "events": len(source.all_events(chain)),
                "approved": ctx.approved(chain),
                "resets": source.resets(chain),
            }
            for chain in source.chains
        }
        poll = {
            **self.poll.snapshot(),
            "queued": {code: source.queued(code) for code in source.external_systems},
        }
        return web.json_response(
            {
                "chains": chains,
                "poll": poll,
                "streaming": self.streaming.snapshot(),
                **({"rest": self.rest.snapshot()} if self.rest is not None else {}),
                "tokens_issued": ctx.tokens.issued,
                "background_emits": len(self.tasks),
            }
        )

    async def on_cleanup(self, app: web.Application) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return cast(web.StreamResponse, await handler(request))
    except BadInput as exc:
        return _bad(exc.field, exc.problem)
    except ValueError as exc:  # a validation rule of the component itself
        return web.json_response({"error": str(exc), "field": "body"}, status=400)


def build_control_app(
    context: GatewayContext,
    streaming: StreamingEndpoint,
    poll: PollEndpoint,
    rest: RestEndpoint | None = None,
) -> web.Application:
    control = _Control(context, streaming, poll, rest)
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
    app.router.add_get("/state", control.state)
    if rest is not None:
        app.router.add_post("/rest-fault", control.rest_fault)
        app.router.add_post("/rest-delete", control.rest_delete)
    app.on_cleanup.append(control.on_cleanup)
    return app


# -- clients -----------------------------------------------------------------------------------------


class ControlError(RuntimeError):
    """The control interface refused a command (or could not be reached)."""


def _payload(
    *,
    count: int | None = None,
    rate: float | None = None,
    hotel: str | None = None,
    chain: str | None = None,
    wait: bool | None = None,
    adversarial: str | list[str] | None = None,
    missing_as: str | None = None,
) -> dict[str, Any]:
    fields = {
        "count": count,
        "rate": rate,
        "hotel": hotel,
        "chain": chain,
        "wait": wait,
        "adversarial": adversarial,
        "missing_as": missing_as,
    }
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
    """The commands, as (method, path, body) triples both clients send."""

    @staticmethod
    def emit(
        count: int,
        rate: float,
        hotel: str | None,
        chain: str | None,
        wait: bool,
        adversarial: str | Sequence[str] | None = None,
        missing_as: str | None = None,
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
        )

    @staticmethod
    def offset_jump(next_offset: int | None, skip: int | None, chain: str | None) -> dict[str, Any]:
        if (next_offset is None) == (skip is None):
            raise TypeError("offset_jump() takes either next_offset or skip")
        body: dict[str, Any] = {"next": next_offset} if next_offset is not None else {"skip": skip}
        return {**body, **({"chain": chain} if chain is not None else {})}

    @staticmethod
    def offset_reset(next_offset: int, chain: str | None) -> dict[str, Any]:
        return {"next": next_offset, **({"chain": chain} if chain is not None else {})}

    @staticmethod
    def poll_fault(mode: str, kw: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(kw) - {"status", "count", "delay", "retry_after"}
        if unknown:
            raise TypeError(f"poll_fault() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
        return {"mode": mode, **kw}

    @staticmethod
    def rest_fault(mode: str, kw: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(kw) - {"status", "count", "retry_after"}
        if unknown:
            raise TypeError(f"rest_fault() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
        return {"mode": mode, **kw}

    @staticmethod
    def rest_delete(kind: str, key: str, hotel: str | None) -> dict[str, Any]:
        return {"kind": kind, "id": key, **({"hotel": hotel} if hotel is not None else {})}


class ControlClient:
    """Blocking client of the control interface (a fresh connection per command)."""

    def __init__(self, control_url: str, *, timeout: float = 30.0) -> None:
        self.control_url = control_url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            with httpx.Client(base_url=self.control_url, timeout=self.timeout, trust_env=False) as http:
                response = (
                    http.request(method, path, json=body) if body is not None else http.request(method, path)
                )
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
    ) -> dict[str, Any]:
        """`adversarial`: kinds to draw from instead of the generator (see POST /emit)."""
        body = _Commands.emit(count, rate, hotel, chain, wait, adversarial, missing_as)
        return self._call("POST", "/emit", body)

    def offset_jump(
        self, next_offset: int | None = None, *, skip: int | None = None, chain: str | None = None
    ) -> dict[str, Any]:
        """The next event gets `next_offset` (or skips `skip` offsets); never backwards."""
        return self._call("POST", "/offset-jump", _Commands.offset_jump(next_offset, skip, chain))

    def offset_reset(self, next_offset: int, *, chain: str | None = None) -> dict[str, Any]:
        """Adversarial: offsets go back to `next_offset`, as after a reset on OHIP's side."""
        return self._call("POST", "/offset-reset", _Commands.offset_reset(next_offset, chain))

    def drop(self) -> dict[str, Any]:
        return self._call("POST", "/drop", {})

    def close(self, code: int, reason: str = "") -> dict[str, Any]:
        return self._call("POST", "/close", {"code": code, "reason": reason})

    def stall_pongs(self, enabled: bool) -> dict[str, Any]:
        return self._call("POST", "/stall-pongs", {"enabled": enabled})

    def backpressure(self, events: int) -> dict[str, Any]:
        return self._call("POST", "/backpressure", {"events": events})

    def expire_tokens(self, close_connections: bool = True) -> dict[str, Any]:
        return self._call("POST", "/expire-tokens", {"close_connections": close_connections})

    def approval(self, chain: str, approved: bool) -> dict[str, Any]:
        return self._call("POST", "/approval", {"chain": chain, "approved": approved})

    def poll_fault(self, mode: str, **kw: Any) -> dict[str, Any]:
        return self._call("POST", "/poll-fault", _Commands.poll_fault(mode, kw))

    def rest_fault(self, mode: str, **kw: Any) -> dict[str, Any]:
        return self._call("POST", "/rest-fault", _Commands.rest_fault(mode, kw))

    def rest_delete(self, kind: str, key: str, hotel: str | None = None) -> dict[str, Any]:
        return self._call("POST", "/rest-delete", _Commands.rest_delete(kind, key, hotel))

    def state(self) -> dict[str, Any]:
        return self._call("GET", "/state")


class AsyncControlClient:
    """Asynchronous client of the control interface (a fresh connection per command)."""

    def __init__(self, control_url: str, *, timeout: float = 30.0) -> None:
        self.control_url = control_url.rstrip("/")
        self.timeout = timeout

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(
                base_url=self.control_url, timeout=self.timeout, trust_env=False
            ) as http:
                if body is not None:
                    response = await http.request(method, path, json=body)
                else:
                    response = await http.request(method, path)
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
    ) -> dict[str, Any]:
        """`adversarial`: kinds to draw from instead of the generator (see POST /emit)."""
        body = _Commands.emit(count, rate, hotel, chain, wait, adversarial, missing_as)
        return await self._call("POST", "/emit", body)

    async def offset_jump(
        self, next_offset: int | None = None, *, skip: int | None = None, chain: str | None = None
    ) -> dict[str, Any]:
        """The next event gets `next_offset` (or skips `skip` offsets); never backwards."""
        return await self._call("POST", "/offset-jump", _Commands.offset_jump(next_offset, skip, chain))

    async def offset_reset(self, next_offset: int, *, chain: str | None = None) -> dict[str, Any]:
        """Adversarial: offsets go back to `next_offset`, as after a reset on OHIP's side."""
        return await self._call("POST", "/offset-reset", _Commands.offset_reset(next_offset, chain))

    async def drop(self) -> dict[str, Any]:
        return await self._call("POST", "/drop", {})

    async def close(self, code: int, reason: str = "") -> dict[str, Any]:
        return await self._call("POST", "/close", {"code": code, "reason": reason})

    async def stall_pongs(self, enabled: bool) -> dict[str, Any]:
        return await self._call("POST", "/stall-pongs", {"enabled": enabled})

    async def backpressure(self, events: int) -> dict[str, Any]:
        return await self._call("POST", "/backpressure", {"events": events})

    async def expire_tokens(self, close_connections: bool = True) -> dict[str, Any]:
        return await self._call("POST", "/expire-tokens", {"close_connections": close_connections})

    async def approval(self, chain: str, approved: bool) -> dict[str, Any]:
        return await self._call("POST", "/approval", {"chain": chain, "approved": approved})

    async def poll_fault(self, mode: str, **kw: Any) -> dict[str, Any]:
        return await self._call("POST", "/poll-fault", _Commands.poll_fault(mode, kw))

    async def rest_fault(self, mode: str, **kw: Any) -> dict[str, Any]:
        return await self._call("POST", "/rest-fault", _Commands.rest_fault(mode, kw))

    async def rest_delete(self, kind: str, key: str, hotel: str | None = None) -> dict[str, Any]:
        return await self._call("POST", "/rest-delete", _Commands.rest_delete(kind, key, hotel))

    async def state(self) -> dict[str, Any]:
        return await self._call("GET", "/state")
