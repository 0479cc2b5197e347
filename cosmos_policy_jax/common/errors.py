"""Exceptions as one line, for error messages that name a file and say why it failed."""

from __future__ import annotations

DEFAULT_LIMIT = 300


def first_line(error: BaseException, limit: int = DEFAULT_LIMIT) -> str:
    """The first non-empty line of ``error``'s message (at most ``limit`` characters), else its type name.

    For an ``OSError`` with a ``strerror`` that is the reason alone ("No such file or directory"),
    without the ``[Errno 2]`` prefix and file name that the caller's message already gives.
    """
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return (line or type(error).__name__)[:limit]
