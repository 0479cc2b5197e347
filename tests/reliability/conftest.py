"""Fixtures shared by the reliability tests: one compilation cache and one uninterrupted reference
run per test session, shared by the pytest-xdist workers through a file lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

import pytest

from tests.reliability import helpers


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory) -> Path:
    """A directory of this session that every xdist worker sees (workers' base temps share a parent)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / "reliability_shared"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def compile_cache(shared_dir) -> Path:
    path = shared_dir / "jax_cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def reference_run(shared_dir, compile_cache) -> Path:
    """The job directory of an uninterrupted ``tiny`` run (4 devices, global batch 4). Read-only: copy it."""
    job = shared_dir / "reference"
    done = shared_dir / "reference.done"
    with _locked(shared_dir / "reference.lock"):
        if not done.exists():
            shutil.rmtree(job, ignore_errors=True)
            r = helpers.run(
                helpers.tiny_args(job, helpers.REFERENCE_ITERS),
                helpers.train_env(compile_cache),
                shared_dir / "reference",
            )
            assert r.returncode == 0, r.tail()
            done.write_text("ok")
    return job
