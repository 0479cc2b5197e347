"""Process-level XLA settings applied by the command-line entry points before JAX starts a backend.

oneDNN on CPU: XLA's own CPU convolutions are slow (a 96-channel 3x3x3 conv3d ~75 GFLOP/s on the
2-core reference machine); with ``--xla_cpu_experimental_onednn_custom_call=true`` they run at
~200 GFLOP/s. Measured with ``benchmarks/train_step.py`` (docs/benchmarks.md): the ``demo``
training step 0.26 s -> 0.14 s, the ``bench`` step 7.9 s -> 6.5 s, numerics unchanged to float32
summation order. So ``train`` and ``eval`` turn it on unless the user decides otherwise:
``COSMOS_POLICY_CPU_ONEDNN=0`` keeps XLA's default, and any explicit
``xla_cpu_experimental_onednn_custom_call`` in ``XLA_FLAGS`` is left as given. The flag only
affects CPU compilation; GPU programs are unchanged.

Cost: XLA cannot serialise executables that contain oneDNN custom calls, so on CPU the training
and sampling steps are compiled at every start instead of coming from the persistent compilation
cache (seconds for ``demo``); the warning JAX prints for each such entry is silenced.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, MutableMapping

ONEDNN_FLAG_NAME = "xla_cpu_experimental_onednn_custom_call"
ONEDNN_FLAG = f"--{ONEDNN_FLAG_NAME}=true"
OPT_OUT_ENV = "COSMOS_POLICY_CPU_ONEDNN"


def enable_cpu_onednn(environ: MutableMapping[str, str] | None = None) -> bool:
    """Add the oneDNN flag to ``XLA_FLAGS`` (call before the first JAX computation); True if added."""
    env = os.environ if environ is None else environ
    if env.get(OPT_OUT_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    flags = env.get("XLA_FLAGS", "")
    if ONEDNN_FLAG_NAME in flags:
        return False
    env["XLA_FLAGS"] = f"{flags} {ONEDNN_FLAG}".strip()
    return True


def onednn_enabled(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return ONEDNN_FLAG in env.get("XLA_FLAGS", "")


def configure_process() -> None:
    """Entry-point set-up: the oneDNN default, and no per-entry warning for the uncacheable executables."""
    enable_cpu_onednn()
    if onednn_enabled():
        warnings.filterwarnings("ignore", message="Error writing persistent compilation cache entry")


def cpu_kernels_note(backend: str) -> str:
    """A short phrase for the start-up summary ('' off the CPU)."""
    if backend != "cpu":
        return ""
    if onednn_enabled():
        return "CPU kernels: oneDNN (COSMOS_POLICY_CPU_ONEDNN=0 for XLA's own, which the compile cache can store)"
    return "CPU kernels: XLA's own (oneDNN off)"
