"""Fixtures shared by the reliability tests: one compilation cache and one uninterrupted reference
run per test session, shared by the pytest-xdist workers through a file lock."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable
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


def shared_once(shared_dir: Path, name: str, compute: Callable[[Path], dict]) -> dict:
    """``compute(directory)`` once per session for all xdist workers; its JSON result is reused.

    A module-scoped fixture would run once per worker that gets one of the module's tests.
    """
    directory = shared_dir / name
    result = shared_dir / f"{name}.json"
    with _locked(shared_dir / f"{name}.lock"):
        if not result.exists():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            result.write_text(json.dumps(compute(directory)))
    return json.loads(result.read_text())


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory) -> Path:
    """A directory of this session that every xdist worker sees (workers' base temps share a parent)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / "reliability_shared"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def one_multiprocess_job_at_a_time(shared_dir):
    """Two-process jobs run one after the other across xdist workers: the second one then finds its
    programs in the compilation cache instead of compiling them again at the same time (4 processes on
    a 2-core machine)."""
    with _locked(shared_dir / "multiprocess.lock"):
        yield


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
