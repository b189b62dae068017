"""Injected HTTP faults of the local gateway's endpoints (Poll API, REST resources): the count-down
shared by each endpoint's fault settings."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, TypeVar


class _Fault(Protocol):
    @property
    def mode(self) -> str: ...

    @property
    def remaining(self) -> int | None: ...


F = TypeVar("F", bound=_Fault)


def take_fault(fault: F, off: F) -> tuple[F | None, F]:
    """The fault this request gets (None when off) and the setting after it: a fault with a count
    has one request fewer left, and turns `off` after its last one."""
    if fault.mode == "off":
        return None, fault
    if fault.remaining is None:
        return fault, fault
    left = fault.remaining - 1
    after: Any = off if left <= 0 else dataclasses.replace(fault, remaining=left)  # type: ignore[type-var]
    return fault, after
