"""Which chain a log line is about, in a task that runs many (the fleet).

A chain session's asyncio task sets its subscription id once (`set_subscription`); every task it
starts inherits it (asyncio copies the context), so every line logged on its behalf names the chain
without passing it around. `SubscriptionFilter` puts it on the record: as the field `subscription`
(JSON lines, queryable with CloudWatch Logs Insights) and, for text lines, as a `[id]` prefix.
Lines logged outside a session (the scheduler, a single-chain consumer) are left as they are.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

_subscription: ContextVar[str | None] = ContextVar("ohip_relay_subscription", default=None)


def set_subscription(subscription_id: str | None) -> None:
    """Name the chain of the current asyncio task (and of the tasks it starts from now on)."""
    _subscription.set(subscription_id)


def current_subscription() -> str | None:
    return _subscription.get()


class SubscriptionFilter(logging.Filter):
    """Adds the current subscription id to each record (`prefix`: also in front of the message)."""

    def __init__(self, *, prefix: bool) -> None:
        super().__init__()
        self._prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        subscription = _subscription.get()
        if subscription is None or getattr(record, "subscription", None) is not None:
            return True
        record.subscription = subscription
        if self._prefix:
            record.msg = f"[{subscription}] {record.msg}"
        return True
