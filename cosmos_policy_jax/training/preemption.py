"""Preemption: SIGTERM/SIGINT ask the training loop to finish the current step, checkpoint and exit.

A scheduler preempting a job sends SIGTERM (Ctrl-C sends SIGINT); the handler only sets a flag, so
the step under way completes and the loop writes a checkpoint at a consistent point. A second
Ctrl-C kills at once, for a step that never finishes.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils


class Preemption:
    """SIGTERM/SIGINT set a flag; the loop finishes the current step, saves, and exits."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python only lets the main thread install handlers
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        del frame
        logging.warning("received signal %d: will checkpoint after the current step and exit", signum)
        self.requested = True
        if signum == signal.SIGINT:  # a second Ctrl-C kills at once, even inside a stuck step
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            print("[cosmos_policy_jax] interrupted: saving after this step (Ctrl-C again aborts)", flush=True)

    def uninstall(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def any_process(self) -> bool:
        """All processes must stop at the same iteration: agree on the flag."""
        if jax.process_count() == 1:
            return self.requested
        flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
        return bool(np.asarray(flags).any())

    def stop_now(self, agreement_point: bool) -> bool:
        """Whether to checkpoint and stop at this iteration.

        One process stops at the first iteration after the signal. Several processes must stop
        together, and agreeing is a collective that every process has to call at the same
        iterations (a signal reaches them at different steps), so they agree only at
        ``agreement_point`` iterations (the loop's logging points) and never stop in between.
        """
        if jax.process_count() == 1:
            return self.requested
        return self.any_process() if agreement_point else False
