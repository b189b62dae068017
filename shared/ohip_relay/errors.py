"""Errors that end a command with one line for the user instead of a traceback."""

from __future__ import annotations


class StartupError(Exception):
    """Something the user can fix (configuration, a busy port, a missing resource).

    `str(error)` is one line that names what is wrong and, where it can, what to do.
    """


def one_line(exc: BaseException) -> str:
    """An exception as one line for a log or a terminal: its type and the first line of its message,
    never a traceback (those are for `-v`)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
