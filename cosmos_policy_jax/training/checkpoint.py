"""orbax checkpoints of the train state, the data-iterator state and the config.

Layout: ``{job.path_local}/checkpoints/<iteration>/{state,data_iter,config}``. Saves are async;
orbax writes each step into a temporary directory and renames it when complete, so a process
killed mid-save leaves no step directory (only a temporary one, which is ignored). A finalised
checkpoint that fails to restore (corrupted or missing file) is moved aside to
``<iteration>.corrupt-<time>`` with a warning and the previous one is tried: a bad checkpoint is
never deleted and never causes a good one to be deleted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from grain import checkpoint as grain_checkpoint

STATE = "state"
DATA = "data_iter"
CONFIG = "config"


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was required."""


@dataclasses.dataclass
class DataIterState:
    """Holder of a data-iterator state (bytes) in grain's checkpoint protocol (one file per process)."""

    state: bytes = b"{}"

    def get_state(self) -> bytes:
        return self.state

    def set_state(self, state: bytes) -> None:
        self.state = state

    def start_prefetch(self) -> None:  # grain's handler calls this after restoring
        pass


class Checkpointer:
    """A ``CheckpointManager`` with the trainer's items, keep-last-N and corrupt-checkpoint fallback."""

    def __init__(self, directory: str, *, keep_last: int = 3, async_save: bool = True, read_only: bool = False):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep_last,
            enable_async_checkpointing=async_save,
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                STATE: ocp.StandardCheckpointHandler(),
                DATA: grain_checkpoint.CheckpointHandler(),
                CONFIG: ocp.JsonCheckpointHandler(),
            },
        )

    # -- save ----------------------------------------------------------------------------------

    def save(self, iteration: int, state: Any, data_state: bytes, config_dict: dict, *, force: bool = True) -> bool:
        args = ocp.args.Composite(
            **{
                STATE: ocp.args.StandardSave(state),
                DATA: grain_checkpoint.CheckpointSave(DataIterState(data_state)),
                CONFIG: ocp.args.JsonSave(config_dict),
            }
        )
        saved = self.manager.save(iteration, args=args, force=force)
        if saved:
            logging.info("checkpoint %d: save started (%s)", iteration, self.step_dir(iteration))
        return saved

    def wait(self) -> None:
        """Block until async saves are on disk; a failed background save raises ``CheckpointError``."""
        try:
            self.manager.wait_until_finished()
        except OSError as e:
            raise CheckpointError(
                f"checkpoint save to {self.directory} failed ({e.strerror or e}); earlier checkpoints are intact"
            ) from e

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def step_dir(self, iteration: int) -> str:
        return os.path.join(self.directory, str(iteration))

    # -- restore -------------------------------------------------------------------------------

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, iteration: int, abstract_state: Any) -> tuple[Any, bytes]:
        holder = DataIterState()
        restored = self.manager.restore(
            iteration,
            args=ocp.args.Composite(
                **{STATE: ocp.args.StandardRestore(abstract_state), DATA: grain_checkpoint.CheckpointRestore(holder)}
            ),
        )
        return restored[STATE], holder.state

    def restore_params(self, iteration: int, abstract_params: Any, *, ema: bool = False) -> Any:
        """Only the (EMA) parameters of a checkpoint, placed with ``abstract_params``' shardings."""
        field = "ema_params" if ema else "params"
        restored = self.manager.restore(
            iteration,
            args=ocp.args.Composite(
                **{STATE: ocp.args.PyTreeRestore(item={field: abstract_params}, partial_restore=True)}
            ),
        )
        return restored[STATE][field]

    def restore_config(self, iteration: int) -> dict:
        return self.manager.restore(iteration, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG]

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, bytes] | None:
        """Restore the newest good checkpoint, moving corrupt ones aside; None if there is none."""
        for iteration in reversed(self.steps()):
            try:
                state, data = self.restore(iteration, abstract_state)
            except Exception as e:  # any failure to read a finalised checkpoint marks it bad
                self._quarantine(iteration, e)
                continue
            return iteration, state, data
        return None

    def _quarantine(self, iteration: int, error: Exception) -> None:
        src = self.step_dir(iteration)
        dst = f"{src}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
        msg = f"checkpoint {src} is unreadable ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
        if jax.process_index() == 0 and os.path.isdir(src):
            os.replace(src, dst)
            msg += f"; moved aside to {dst}, falling back to the previous checkpoint"
        logging.warning("%s", msg)
        print(f"warning: {msg}", flush=True)
        self.manager.reload()


def is_orbax_checkpoint_dir(path: str) -> bool:
    """A checkpoint root (numbered step dirs) or a single step dir holding a ``state`` item."""
    if not os.path.isdir(path):
        return False
    if os.path.isdir(os.path.join(path, STATE)):
        return True
    return any(name.isdigit() and os.path.isdir(os.path.join(path, name, STATE)) for name in os.listdir(path))


def split_step_dir(path: str) -> tuple[str, int | None]:
    """``.../checkpoints/1000`` -> (``.../checkpoints``, 1000); a root -> (root, None = latest)."""
    path = os.path.abspath(path.rstrip("/"))
    base = os.path.basename(path)
    if base.isdigit() and os.path.isdir(os.path.join(path, STATE)):
        return os.path.dirname(path), int(base)
    return path, None


def write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
