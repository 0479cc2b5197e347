"""The training CLI with one fault injected, for the reliability tests (run as a subprocess).

    python -m tests.reliability.fault_train <the arguments of cosmos_policy_jax.train>

The fault is chosen by environment variables (none set: the plain CLI):

- ``FAULT_NAN_INDEX=i``: the synthetic source returns a NaN action for sample index ``i``.
- ``FAULT_STALL_INDEX=i``: the synthetic source blocks forever on sample index ``i`` (a stuck loader).
- ``FAULT_KILL_AT_COMMIT=n``: SIGKILL this process while committing checkpoint ``n`` (all data written,
  commit marker and rename not yet done), as a crash during a save.
- ``FAULT_ENOSPC_AT_COMMIT=n``: committing checkpoint ``n`` fails with ``OSError(ENOSPC)`` in orbax's
  background thread, as a full disk.
"""

from __future__ import annotations

import errno
import os
import signal
import threading

import numpy as np


def _install_source_faults() -> None:
    from cosmos_policy_jax.data.synthetic import SyntheticSource

    nan_index = os.environ.get("FAULT_NAN_INDEX")
    stall_index = os.environ.get("FAULT_STALL_INDEX")
    if nan_index is None and stall_index is None:
        return
    original = SyntheticSource.get

    def get(self, index, epoch=0, **kwargs):
        sample = original(self, index, epoch, **kwargs)
        if nan_index is not None and int(index) == int(nan_index):
            actions = np.array(sample["actions"], dtype=np.float64)
            actions[0, 0] = np.nan
            sample["actions"] = actions
        if stall_index is not None and int(index) == int(stall_index):
            print(f"[fault] stalling on sample {index}", flush=True)
            threading.Event().wait()  # never set: the loader thread hangs like a dead file system
        return sample

    SyntheticSource.get = get


def _install_commit_faults() -> None:
    kill_at = os.environ.get("FAULT_KILL_AT_COMMIT")
    enospc_at = os.environ.get("FAULT_ENOSPC_AT_COMMIT")
    if kill_at is None and enospc_at is None:
        return
    from orbax.checkpoint._src.path import atomicity

    original = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self):
        final = self.get_final()
        # Only the step directory (checkpoints/<n>), not the item directories inside it.
        if final.parent.name == "checkpoints":
            if kill_at is not None and final.name == kill_at:
                print(f"[fault] SIGKILL while committing {final}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            if enospc_at is not None and final.name == enospc_at:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.get()))
        return await original(self)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize


if __name__ == "__main__":
    _install_source_faults()
    _install_commit_faults()
    from cosmos_policy_jax import train

    train.run()
