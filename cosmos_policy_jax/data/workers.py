"""Data worker processes: they go when their parent goes, and they do not load jax.

grain starts its ``mp_prefetch`` workers with multiprocessing's spawn method. Two things are done here:

* ``exit_with_parent`` (grain's ``worker_init_fn``): a daemon thread in each worker polls its parent
  pid and ends the worker once the parent is gone, however the parent died (SIGKILL, the
  out-of-memory killer). When the last worker has gone, multiprocessing's resource tracker sees its
  pipe close and unlinks the shared-memory segments the workers created and the dead parent never
  released, then exits too. Polling (not ``PR_SET_PDEATHSIG``) because the death signal fires when
  the *thread* that started the worker exits, and grain starts workers from whichever thread asks
  for the first batch (the trainer's prefetch thread).
* ``keep_jax_out_of_spawned_worker``: grain imports jax when it is installed (for its profiler and
  tree utilities, both optional), which maps jaxlib into every worker (hundreds of MB each). The
  package's ``__init__`` calls this first thing. It acts only in a multiprocessing spawn child
  (``--multiprocessing-fork`` on the interpreter's own command line, ``sys.orig_argv``; spawn
  replaces ``sys.argv`` by the parent's) started inside ``starting_data_workers()`` (the pipeline's
  window around grain starting its workers, marked by an environment variable the child inherits),
  and makes ``import jax`` fail there, so grain takes its jax-free fallbacks. Other spawned children
  (e.g. the LIBERO environment workers of ``eval``) are not affected. The data modules themselves
  import numpy, PIL, h5py and grain only. ``COSMOS_POLICY_WORKER_JAX=1`` turns it off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator

_NO_JAX = ("jax", "jaxlib", "flax", "optax", "orbax")
_MARK = "COSMOS_POLICY_DATA_WORKER"
POLL_S = 0.5


class _NoJax:
    """A meta-path finder that refuses jax and the libraries built on it."""

    def find_spec(self, name: str, path=None, target=None):
        del path, target
        if name.partition(".")[0] in _NO_JAX:
            raise ImportError(f"{name} is not loaded in data worker processes")
        return None


def keep_jax_out_of_spawned_worker(argv: list[str] | None = None) -> bool:
    """In a multiprocessing spawn child, make jax imports fail (see the module docstring); True if done."""
    argv = sys.orig_argv if argv is None else argv
    if "--multiprocessing-fork" not in argv or os.environ.get(_MARK) != "1":
        return False
    if os.environ.get("COSMOS_POLICY_WORKER_JAX") == "1":
        return False
    if "jax" in sys.modules or any(isinstance(f, _NoJax) for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, _NoJax())
    # grain reports the missing jax profiler once per worker; that is the intended state, not news.
    logging.getLogger("absl").addFilter(lambda record: "Failed to load jax profiler" not in record.getMessage())
    return True


@contextlib.contextmanager
def starting_data_workers() -> Iterator[None]:
    """Children spawned inside this block are data workers (they inherit the mark; see above)."""
    previous = os.environ.get(_MARK)
    os.environ[_MARK] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_MARK, None)
        else:
            os.environ[_MARK] = previous


def _watch(parent_pid: int, poll_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    # The parent is gone: nobody will read this worker's batches. Leave now, without running
    # finalisers that could block on queues whose reader is dead.
    os._exit(0)


def exit_with_parent(parent_pid: int, worker_index: int = 0, worker_count: int = 0, *, poll_s: float = POLL_S) -> None:
    """grain ``worker_init_fn`` (with ``functools.partial(exit_with_parent, os.getpid())`` from the parent)."""
    del worker_index, worker_count
    if os.getppid() != parent_pid:  # the parent died before this worker even started
        os._exit(0)
    threading.Thread(target=_watch, args=(parent_pid, poll_s), name="exit-with-parent", daemon=True).start()
