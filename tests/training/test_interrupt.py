"""A first Ctrl-C asks for a checkpoint and exit; a second one kills the process at once."""

import os
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = r"""
import os, signal, time
from cosmos_policy_jax.training.loop import Preemption
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
