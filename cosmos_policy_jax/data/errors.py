"""Errors raised by the dataset readers for bad input (missing/corrupt files, unknown keys)."""

from __future__ import annotations


class DataError(ValueError):
    """A dataset file, directory or key is missing, malformed or unsafe.

    The message is one line and names the offending file, key or value, so that an entry point can
    print it as is and exit non-zero.
    """
