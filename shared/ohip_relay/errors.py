"""Errors that end a command with one line for the user instead of a traceback."""

from __future__ import annotations


class StartupError(Exception):
    """Something the user can fix (configuration, a busy port, a missing resource).

    `str(error)` is one line that names what is wrong and, where it can, what to do.
    """
