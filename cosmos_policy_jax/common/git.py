"""The git commit of the checkout the package runs from (run and benchmark metadata)."""

from __future__ import annotations

import os
import subprocess

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_commit(path: str | None = None, *, short: bool = False, timeout: float = 10.0) -> str | None:
    """HEAD of the repository holding ``path`` (default: this package); None outside a checkout or
    without git. Uncommitted edits are not flagged."""
    cmd = ["git", "rev-parse", *(["--short"] if short else []), "HEAD"]
    try:
        out = subprocess.run(cmd, cwd=path or _PACKAGE_DIR, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None
