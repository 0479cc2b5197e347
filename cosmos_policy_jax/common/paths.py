"""``${VAR}``/``$VAR`` and ``~`` expansion of path settings, with the unset variables named."""

from __future__ import annotations

import os
import re
import string

ENV_PATTERN = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")

# Defaults for the path variables the shipped configs use, so `demo` works with no environment set.
DEFAULT_VARS = {"COSMOS_POLICY_DATA_ROOT": os.path.join(os.path.expanduser("~"), ".cache", "cosmos_policy_jax")}


def expand_path(value: str) -> tuple[str, list[str]]:
    """Expand ``${VAR}``/``$VAR`` and ``~``; returns the result and the names of unset variables
    (left unexpanded in the result)."""
    missing = [m for m in ENV_PATTERN.findall(value) if m not in os.environ and m not in DEFAULT_VARS]
    expanded = string.Template(value).safe_substitute({**DEFAULT_VARS, **os.environ})
    return os.path.expanduser(expanded), missing


def unset_message(what: str, missing: list[str], value: str) -> str:
    return f"{what}: environment variable(s) {', '.join(missing)} not set ({value})"


def expand_required(value: str, what: str, error: type[Exception] = ValueError) -> str:
    """The absolute expanded path, or ``error`` naming ``what`` and the unset variables."""
    expanded, missing = expand_path(value)
    if missing:
        raise error(unset_message(what, missing, value))
    return os.path.abspath(expanded)
