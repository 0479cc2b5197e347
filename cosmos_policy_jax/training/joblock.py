"""One run per job directory: an OS advisory lock on ``<job>/.job.lock``.

The lock is ``flock`` on a close-on-exec descriptor: the kernel drops it when the holding process
dies, however it dies (SIGKILL, out-of-memory killer), so a lock left by a dead run is never an
obstacle; the holder details it left in the file are reported as taken over. Data workers are
started by spawn (fork + exec), so the close-on-exec descriptor does not reach them and an orphaned
worker cannot keep a job locked. Unlike POSIX record locks, a second ``acquire`` in the same process
is refused too (Linux emulates ``flock`` with record locks on NFS, where that case is not caught).

The file holds one JSON object naming the holder (host, pid, start time, command line), which is
what a second run prints when it is refused. Multi-process jobs take the lock once, on process 0;
the other processes learn the outcome from it, so they all stop together.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
from collections.abc import Callable

from absl import logging

LOCK_NAME = ".job.lock"


class JobDirectoryError(RuntimeError):
    """The job directory cannot be used (a file, not writable)."""


class JobLockedError(JobDirectoryError):
    """Another live run holds the job directory."""


class JobLock:
    """The held lock of one job directory; ``release()`` (or process exit) frees it."""

    def __init__(self, path: str, fd: int):
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)  # no holder any more; the file stays (deleting it would race)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> JobLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder_info() -> dict:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "argv": sys.argv,
    }


def _describe(info: dict) -> str:
    return f"host {info.get('host', '?')}, pid {info.get('pid', '?')}, started {info.get('started', '?')}"


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 65536).decode("utf-8") or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def acquire(job_dir: str) -> JobLock:
    """Lock ``job_dir`` (created if missing) for this process, or raise ``JobLockedError`` at once."""
    if os.path.exists(job_dir) and not os.path.isdir(job_dir):
        raise JobDirectoryError(f"job.path_local {job_dir} is a file, not a directory")
    path = os.path.join(job_dir, LOCK_NAME)
    try:
        os.makedirs(job_dir, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:  # a parent that is a file, no permission, read-only file system
        raise JobDirectoryError(f"job.path_local {job_dir}: cannot create {path} ({e.strerror or e})") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _read_holder(fd)
        os.close(fd)
        raise JobLockedError(
            f"job directory {job_dir} is in use by another run ({_describe(holder)}; lock file {path}); "
            "wait for it to end or choose another job.path_local"
        ) from None
    previous = _read_holder(fd)
    if previous:  # the kernel freed the lock, so its holder died without releasing it
        logging.warning(
            "job directory %s: taking over the lock of a run that is gone (%s)", job_dir, _describe(previous)
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_holder_info()).encode("utf-8"), 0)
    os.fsync(fd)
    return JobLock(path, fd)


def acquire_for_job(job_dir: str, is_main: bool, share: Callable[[str], str] | None = None) -> JobLock | None:
    """Process 0 takes the lock; with ``share`` (process 0's string to everyone) all processes see the outcome.

    Returns the lock on process 0, None elsewhere; raises ``JobLockedError`` on every process if
    process 0 could not take it.
    """
    lock, message = None, ""
    if is_main:
        try:
            lock = acquire(job_dir)
        except JobDirectoryError as e:
            message = f"{type(e).__name__}:{e}"
    if share is not None:
        message = share(message or "ok")
    if message and message != "ok":
        kind, _, text = message.partition(":")
        if lock is not None:
            lock.release()
        raise (JobLockedError if kind == "JobLockedError" else JobDirectoryError)(text)
    return lock
