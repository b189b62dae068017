"""`make run`: the whole pipeline on the local stack, with the failures it is built to survive.

1. moto server on loopback with the queue, dead-letter queue, table and bucket of template.yaml;
2. the local OHIP gateway (OAuth, Streaming API, Poll API, control interface);
3. `ohip-relay stream` as a real child process, exactly as the Fargate task runs it;
4. the gateway emits events at a steady rate while the demo breaks things: it drops the
   connection, expires the OAuth tokens (4401), kills the relay with SIGKILL and starts it again;
5. a reader drains the queue as a downstream consumer would, the relay is stopped with SIGTERM
   (complete, drain, checkpoint), and every emitted event is looked for on the queue by its
   identity (`eventId`, reconcile.py): distinct events are counted by eventId, not by content key,
   which two lookalike changes share.

It exits 0 only when no event was lost and the relay stopped cleanly.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ohip_relay.state import StateStore, StreamState

from .aws import (
    DEFAULT_REGION,
    OPERATOR_ROLE,
    POLL_ROLE,
    STREAM_ROLE,
    local_client,
    moto_server,
    provision,
)
from .control import ControlClient
from .gateway import GatewayConfig
from .harness import HarnessError, QueueReader, RelayProcess, wait_until
from .iam import denials, describe_denials
from .reconcile import (
    CHANNEL_OVERLAP,
    POLL_REPEAT,
    STREAM_REPLAY,
    UNDOCUMENTED,
    EmittedEvent,
    emitted_event,
    reconcile,
)
from .source import EventSource
from .stack import environment_for, find_template
from .threaded import running_gateway


def _dynamodb(endpoint: str, region: str) -> Any:
    return local_client("dynamodb", endpoint, region)


DELIVERY_TIMEOUT = 120.0


def _say(text: str) -> None:
    print(text, flush=True)


def _relay_log_echo(verbose: bool) -> Callable[[str], None]:
    def echo(line: str) -> None:
        if verbose or " WARNING " in line or " ERROR " in line or "subscribed" in line or "stopped" in line:
            print(f"    relay | {line[24:] if line[:4].isdigit() else line}", flush=True)

    return echo


# One line each, as the README's "Delivery guarantees" says it.
_DUPLICATE_KINDS = {
    STREAM_REPLAY: "same eventId: the stream re-sent events from its checkpoint after a reconnect "
    "or crash; dropped by consumers idempotent on eventId (and by SQS FIFO within 5 min)",
    CHANNEL_OVERLAP: "same eventKey, the other channel's eventId: one change carried by both channels "
    "around the outage (the first tick publishes all the Poll API holds)",
    POLL_REPEAT: "same poll eventId: the fallback sent a page again after a partial success or a "
    "crash; dropped like a replay",
}


def run_demo(*, events: int = 300, rate: float = 100.0, seed: int = 1, verbose: bool = False) -> int:
    if events < 10:
        raise HarnessError("the demo needs at least 10 events")
    if not verbose:
        for name in ("ohip_local", "werkzeug", "botocore", "urllib3", "aiohttp"):
            logging.getLogger(name).setLevel(logging.WARNING)
    template = find_template()
    started = time.monotonic()
    _say("ohip-relay local demo")
    _say(f"  template      {template}")
    with moto_server("127.0.0.1", 0) as endpoint:
        stack = provision(endpoint, template, stack_name="ohip-relay-demo", region=DEFAULT_REGION)
        queue_name = stack.queue_url.rsplit("/", 1)[-1]
        _say(f"  local AWS     {endpoint} (queue {queue_name}, table {stack.table_name})")
        _say("  IAM           enforced: stream, poll tick and status each under their template role")
        config = GatewayConfig(seed=seed)
        with running_gateway(config) as gateway:
            control = ControlClient(gateway.control_url)
            _say(f"  local OHIP    {gateway.url} (control {gateway.control_url})")
            # The stream's environment as the Fargate task has it: its role's temporary credentials
            # and the OHIP credentials in Secrets Manager (OHIP_SECRET_ARN), read under that role.
            env = {
                **environment_for(stack, role=STREAM_ROLE),
                **stack.store_ohip_credentials(
                    client_id=config.client_id, client_secret=config.client_secret, app_key=config.app_key
                ),
                "OHIP_GATEWAY_URL": gateway.url,
                "OHIP_ENTERPRISE_ID": config.enterprise_id,
                "OHIP_CHAIN_CODE": config.chains[0],
                "RELAY_START_POSITION": "earliest",
                "RELAY_LEASE_SECONDS": "6",  # so the restart after SIGKILL does not wait 30 s
                "OHIP_EXTERNAL_SYSTEM": config.external_systems[0],
                # Short health thresholds so that the outage and the recovery fit in a demo; the
                # heartbeat comes more often than the stale threshold, as it must.
                "RELAY_HEARTBEAT_SECONDS": "1",
                "RELAY_HEALTH_STALE_SECONDS": "4",
                "RELAY_HEALTH_GRACE_SECONDS": "4",
                "RELAY_HEALTH_RECOVER_SECONDS": "3",
                "POWERTOOLS_METRICS_DISABLED": "true",
                "PYTHONUNBUFFERED": "1",
            }
            echo = _relay_log_echo(verbose)
            reader = QueueReader(stack.queue_url, endpoint_url=endpoint, region=stack.region)
            chain = config.chains[0]
            # The identity and content key of every change the gateway emits.
            tracked = _Emitted(gateway.source, chain)
            with reader:
                state = StateStore(_dynamodb(endpoint, stack.region), stack.table_name, chain)
                roles = {role: stack.credentials(role).environment() for role in (POLL_ROLE, OPERATOR_ROLE)}
                status, suppressed = _scenario(
                    control,
                    env,
                    reader,
                    tracked,
                    events=events,
                    rate=rate,
                    echo=echo,
                    state=state,
                    roles=roles,
                )
                fallback = state.get_fallback()
                delivered = reader.snapshot()
            denied = describe_denials(denials(endpoint))
            emitted = tracked.all()
    accounts = reconcile(emitted, delivered.bodies)
    lost, unexpected = accounts.lost, accounts.unexpected
    duplicates = accounts.duplicates
    by_source = Counter(str(body.get("source")) for body in delivered.bodies)
    kinds = ", ".join(
        f"{kind} {duplicates[kind]}"
        for kind in (STREAM_REPLAY, CHANNEL_OVERLAP, POLL_REPEAT, UNDOCUMENTED)
        if duplicates[kind]
    )
    _say("")
    _say("reconciliation (by event identity: eventId)")
    _say(f"  emitted by the gateway          {len(emitted)}")
    _say(
        f"  messages on the queue           {len(delivered.bodies)} (stream {by_source['stream']}, "
        f"poll {by_source['poll']}; {len(set(delivered.event_ids()))} distinct eventIds)"
    )
    _say(f"  distinct events delivered       {accounts.delivered}")
    _say(f"  duplicates on the queue         {sum(duplicates.values())}" + (f" ({kinds})" if kinds else ""))
    for kind in (STREAM_REPLAY, CHANNEL_OVERLAP, POLL_REPEAT):
        _say(f"    {kind:<16}{duplicates[kind]:>5}  {_DUPLICATE_KINDS[kind]}")
    if fallback is not None:
        _say(f"  fallback: published from poll   {fallback.counter('published')}")
        _say(f"  fallback: repeated eventIds     {fallback.counter('duplicates')}")
    _say(f"  stream: seen-set suppressed     {suppressed} (replayed events the fallback had sent)")
    if accounts.covered:
        _say(f"  covered by a lookalike          {len(accounts.covered)} (stream copy suppressed against")
        _say("                                  the poll copy of an identical change)")
    _say(f"  lost                            {len(lost)}")
    _say(f"  unexpected                      {len(unexpected)}")
    _say(f"  relay exit status               {status}")
    _say(f"  took                            {time.monotonic() - started:.1f}s")
    for line in denied:  # a component's role lacks what the component did (docs/permissions.md)
        _say(f"  {line}")
    ok = not lost and not unexpected and status == 0 and not denied
    _say("OK: every emitted event reached the queue" if ok else "FAILED: see above")
    return 0 if ok else 1


def _poll_tick(env: dict[str, str], cwd: Path) -> str:
    """One fallback tick, run exactly as the scheduled Lambda runs it (`ohip-relay poll`)."""
    tick = subprocess.run(
        [sys.executable, "-m", "ohip_relay.cli", "poll", "--time-limit", "30"],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    summary = tick.stdout.strip() or tick.stderr.strip().splitlines()[-1:] or ["(no output)"]
    return summary if isinstance(summary, str) else summary[0]


def _status(env: dict[str, str], cwd: Path) -> str:
    """`ohip-relay status --json`, summarised: what an operator (OperatorRole) sees."""
    run = subprocess.run(
        [sys.executable, "-m", "ohip_relay.cli", "status", "--json"],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    try:
        report = json.loads(run.stdout)
    except ValueError:
        return (run.stderr.strip().splitlines() or ["(no output)"])[-1]
    checkpoint, state = report.get("checkpoint"), report.get("state")
    return f"checkpoint {checkpoint}, state {state}, lease held by {report.get('leaseOwner') or 'nobody'}"


def _scenario(
    control: ControlClient,
    env: dict[str, str],
    reader: QueueReader,
    tracked: _Emitted,
    *,
    events: int,
    rate: float,
    echo: Callable[[str], None],
    state: StateStore,
    roles: dict[str, dict[str, str]],
) -> tuple[int, int]:
    """`env` is the stream's; the poll tick and `status` run with their roles' credentials (`roles`)."""
    cwd = Path(os.getcwd())
    share = events // 5
    emitted = 0

    def emit(count: int) -> None:
        nonlocal emitted
        control.emit(count, rate=rate, wait=True)
        emitted += count
        _say(f"  emitted {emitted:>5}/{events}   on the queue {reader.count():>5}")

    def subscriptions() -> int:
        return sum("subscribed to chain" in line for line in list(relay.lines))

    def tick(label: str) -> None:
        _say(f"  poll tick ({label}): {_poll_tick({**env, **roles[POLL_ROLE]}, cwd)}")

    relay = RelayProcess(["stream"], env, echo=echo, cwd=cwd).start()
    try:
        wait_until(lambda: relay.saw("subscribed"), timeout=30, what="the relay to subscribe")
        _say("step 1: steady stream; the fallback sees a healthy stream and keeps the poll queue drained")
        emit(share)
        tick("stream healthy")
        _say("step 2: the gateway drops the connection (no close frame); the relay reconnects and replays")
        control.drop()
        emit(share)
        wait_until(lambda: subscriptions() >= 2, timeout=30, what="the relay to reconnect")
        _say("step 3: the OAuth tokens expire and the gateway closes with 4401; the relay renews and resumes")
        control.expire_tokens(close_connections=True)
        emit(share)
        wait_until(lambda: subscriptions() >= 3, timeout=30, what="the relay to reconnect")
        _say("step 4: outage: the relay is killed with SIGKILL; its heartbeat goes stale")
        relay.kill()
        emit(share)
        wait_until(
            lambda: _heartbeat_age(state) > float(env["RELAY_HEALTH_STALE_SECONDS"]),
            timeout=30,
            what="the heartbeat to go stale",
        )
        tick("stream down")
        _say("step 5: recovery: the relay replays from its checkpoint and skips what the fallback sent")
        relay = RelayProcess(["stream"], env, echo=echo, cwd=cwd).start()
        emit(events - 4 * share)
        wait_until(lambda: _connected(state), timeout=30, what="the relay to report connected")
        tick("stream back")
        recover = float(env["RELAY_HEALTH_RECOVER_SECONDS"])
        deadline = time.monotonic() + recover + 1
        wait_until(lambda: time.monotonic() > deadline, timeout=recover + 5, what="the recover period")
        tick("stream healthy again")
        _say("step 6: waiting until every event is on the queue")
        try:
            wait_until(
                lambda: _all_delivered(tracked.all(), reader),
                timeout=DELIVERY_TIMEOUT,
                interval=0.2,
                what="every event on the queue",
            )
        except HarnessError as exc:
            _say(f"  {exc}")
        _say(f"  on the queue {reader.count()} messages")
        _say("step 7: SIGTERM: complete, drain, checkpoint, release the lease")
        status = relay.terminate(timeout=60)
        _say(f"step 8: `ohip-relay status`, as an operator: {_status({**env, **roles[OPERATOR_ROLE]}, cwd)}")
        return status, _suppressed(relay)
    finally:
        if relay.returncode is None:
            relay.kill()


class _Emitted:
    """The events the gateway emitted on a chain, with their content keys (computed once)."""

    def __init__(self, source: EventSource, chain: str) -> None:
        self._source = source
        self._chain = chain
        self._events: dict[int, EmittedEvent] = {}  # by businessEventId (unique, unlike offsets)

    def all(self) -> list[EmittedEvent]:
        for event in self._source.all_events(self._chain):
            if event.business_event_id not in self._events:
                self._events[event.business_event_id] = emitted_event(event)
        return list(self._events.values())


def _all_delivered(emitted: list[EmittedEvent], reader: QueueReader) -> bool:
    return reconcile(emitted, reader.snapshot().bodies).delivered >= len(emitted)


def _suppressed(relay: RelayProcess) -> int:
    total = 0
    for line in relay.lines:
        match = re.search(r"skipped (\d+) replayed events", line)
        if match:
            total = int(match.group(1))
    return total


def _heartbeat_age(state: StateStore) -> float:
    heartbeat = state.get_heartbeat()
    return float("inf") if heartbeat is None else heartbeat.age(time.time())


def _connected(state: StateStore) -> bool:
    heartbeat = state.get_heartbeat()
    return (
        heartbeat is not None and heartbeat.state is StreamState.CONNECTED and heartbeat.age(time.time()) < 2
    )


def main() -> int:  # pragma: no cover - `python -m ohip_local.demo`
    return run_demo()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
