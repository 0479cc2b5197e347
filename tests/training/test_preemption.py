"""Preemption: SIGTERM/SIGINT only set a flag (the loop saves and exits), a second Ctrl-C kills the
process at once, and several processes agree on stopping only at the points given to ``stop_now``."""

import os
import signal
import subprocess
import sys
import threading

import numpy as np

from cosmos_policy_jax.training import preemption as preemption_lib
from cosmos_policy_jax.training.preemption import Preemption

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = r"""
import os, signal, time
from cosmos_policy_jax.training.preemption import Preemption
p = Preemption()
p.install()
os.kill(os.getpid(), signal.SIGINT)
time.sleep(0.2)
print("requested", p.requested, flush=True)
os.kill(os.getpid(), signal.SIGINT)
time.sleep(5)
print("still alive", flush=True)
"""


def test_second_interrupt_aborts():
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert "requested True" in out.stdout and "Ctrl-C again aborts" in out.stdout
    assert "still alive" not in out.stdout
    assert out.returncode == -signal.SIGINT


def test_sigterm_sets_the_flag_and_uninstall_restores_the_handlers():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    p = Preemption()
    p.install()
    try:
        assert signal.getsignal(signal.SIGTERM) == p._handle
        assert not p.stop_now(agreement_point=True)
        os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode: the process lives on
        assert p.requested
        # One process stops at the first iteration after the signal, agreement point or not.
        assert p.stop_now(agreement_point=False)
    finally:
        p.uninstall()
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_install_off_the_main_thread_changes_nothing():
    before = signal.getsignal(signal.SIGTERM)
    p = Preemption()
    t = threading.Thread(target=p.install)  # signal.signal would raise there
    t.start()
    t.join()
    assert signal.getsignal(signal.SIGTERM) == before and p._old == {}


def test_several_processes_agree_only_at_agreement_points(monkeypatch):
    """The agreement is a collective: never called between agreement points (the processes would
    deadlock), and a flag raised on any one process stops them all at the next one."""
    calls = []

    def allgather(x):
        calls.append(int(x))
        return np.stack([np.asarray(x), np.asarray(1 if peer_requested else 0, np.int32)])

    monkeypatch.setattr(preemption_lib.jax, "process_count", lambda: 2)
    monkeypatch.setattr(preemption_lib.multihost_utils, "process_allgather", allgather)
    p = Preemption()
    peer_requested = False
    assert not p.stop_now(agreement_point=True) and calls == [0]
    p.requested = True
    assert not p.stop_now(agreement_point=False) and calls == [0]  # requested here, but no collective
    assert p.stop_now(agreement_point=True) and calls == [0, 1]
    p.requested, peer_requested = False, True
    assert p.stop_now(agreement_point=True) and calls == [0, 1, 0]  # the peer's signal stops this one too
