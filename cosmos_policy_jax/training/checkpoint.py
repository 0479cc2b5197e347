"""orbax checkpoints of the train state, the data-iterator state and the config.

Layout: ``{job.path_local}/checkpoints/<iteration>/{state,data_iter,config,fingerprint,inference}``
(``inference``: what serving needs besides the weights, see ``training/assets.py``). Saves
are async; orbax writes each step into a temporary directory and renames it when complete, so a
process killed mid-save leaves no step directory, only a temporary one, which is reported with a
warning and removed. A finalised checkpoint that fails to restore (corrupted or missing file) is
moved aside to ``<iteration>.corrupt-<time>`` with a warning and the previous one is tried: a bad
checkpoint is never deleted and never causes a good one to be deleted.

orbax/tensorstore do not checksum array data (a damaged compressed chunk can decode to garbage
without an error), so each save also writes ``fingerprint``: a position-weighted uint32 sum of
every state array's bits, computed on device (sharding-independent, exact). A restore recomputes
it and treats any difference as corruption. A checkpoint whose arrays have other shapes than the
model (another model size) is not corruption: it raises ``CheckpointMismatchError`` naming the
arrays and moves nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging as py_logging
import os
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from grain import checkpoint as grain_checkpoint
from jax.experimental import multihost_utils

from cosmos_policy_jax.common.errors import first_line
from cosmos_policy_jax.training import optimizer as opt_lib

STATE = "state"
DATA = "data_iter"
CONFIG = "config"
FINGERPRINT = "fingerprint"
INFERENCE = "inference"  # dataset statistics + T5 embeddings reference (training/assets.py)
# orbax's name for a step directory still being written (``<step>.orbax-checkpoint-tmp[-<n>]``).
_TMP_STEP = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")
# grain's per-process data-iterator files.
_DATA_FILE = re.compile(r"^process_\d+-of-\d+\.json$")


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was required, or a checkpoint could not be written."""


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint whose arrays do not fit the model (another size or structure)."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint whose restored contents differ from what was saved."""


def _words(x: jax.Array) -> jax.Array:
    """The bits of ``x`` as uint32 (one word per element; 8-byte types give a trailing axis of 2)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    bits = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, bits).astype(jnp.uint32)


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
    # sum_i word_i * (2 i + 1) mod 2^32: odd weights make any single changed word visible, the weights
    # make moved words visible, and modular sums are exact in any reduction order (any sharding).
    w = _words(x)
    weight = jnp.zeros(w.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(w.ndim)):
        weight = weight + jax.lax.broadcasted_iota(jnp.uint32, w.shape, axis) * jnp.uint32(stride % 2**32)
        stride *= w.shape[axis]
    return jnp.sum(w * (2 * weight + 1), dtype=jnp.uint32)


@jax.jit
def _fingerprints(leaves: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: _leaf_fingerprint(v) for k, v in leaves.items()}


def _flat_arrays(tree: Any) -> dict[str, Any]:
    """``{"params.blocks...kernel.value": leaf}`` with orbax's own key paths (array leaves only)."""
    flat = ocp.tree.to_flat_dict(tree)
    return {".".join(str(p) for p in k): v for k, v in flat.items() if hasattr(v, "shape") and hasattr(v, "dtype")}


def state_fingerprint(state: Any) -> dict[str, int]:
    """Per-array uint32 fingerprints of a (sharded, possibly multi-process) pytree; collective."""
    out = _fingerprints(_flat_arrays(state))
    return {k: int(np.asarray(v.addressable_data(0) if hasattr(v, "addressable_data") else v)) for k, v in out.items()}


@jax.jit
def _all_finite(leaves: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: jnp.all(jnp.isfinite(v)) for k, v in leaves.items()}


def nonfinite_arrays(tree: Any) -> list[str]:
    """Sorted keys (as in the fingerprint) of the floating-point arrays of ``tree`` holding NaN or inf."""
    leaves = {k: v for k, v in _flat_arrays(tree).items() if jnp.issubdtype(v.dtype, jnp.inexact)}
    flags = jax.device_get(_all_finite(leaves))
    return sorted(k for k, ok in flags.items() if not bool(ok))


def _all_processes_ok(ok: bool) -> bool:
    """Whether every process succeeded (a failure on one process must stop all of them alike)."""
    if jax.process_count() == 1:
        return ok
    flags = multihost_utils.process_allgather(np.asarray(ok, np.int32))
    return bool(np.asarray(flags).all())


def _listing(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


class _ExceptionsAsOneLine(py_logging.Filter):
    """Below INFO verbosity (the CLI's default), an exception logged by orbax's save threads is one line.

    The trainer reports the failure itself as its last line (``error: ...``); a full disk would
    otherwise print every background thread's traceback around it. ``--verbosity=0`` (INFO) or
    higher shows the tracebacks again.
    """

    def filter(self, record: py_logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and logging.get_verbosity() < logging.INFO:
            error = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(error).__name__}: {first_line(error)})"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


def _quiet_background_tracebacks() -> None:
    logger = py_logging.getLogger("absl")
    if not any(isinstance(f, _ExceptionsAsOneLine) for f in logger.filters):
        logger.addFilter(_ExceptionsAsOneLine())


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
        self.read_only = read_only
        self._in_flight: int | None = None  # the step whose async save has not been confirmed yet
        _quiet_background_tracebacks()
        if not read_only:
            self._report_incomplete()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep_last,
            enable_async_checkpointing=async_save,
            # Created by the first save, not here: a run that fails on bad input leaves the job dir as it was.
            create=False,
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
                FINGERPRINT: ocp.JsonCheckpointHandler(),
                INFERENCE: ocp.JsonCheckpointHandler(),
            },
        )

    def _report_incomplete(self) -> None:
        """Warn about step directories a killed save left behind (orbax removes them on start-up)."""
        if jax.process_index() != 0 or not os.path.isdir(self.directory):
            return
        for name in sorted(os.listdir(self.directory)):
            if _TMP_STEP.match(name):
                msg = (
                    f"checkpoint {os.path.join(self.directory, name)} is incomplete (a save was interrupted); "
                    "ignoring it and resuming from the newest complete checkpoint"
                )
                logging.warning("%s", msg)
                print(f"warning: {msg}", flush=True)

    # -- save ----------------------------------------------------------------------------------

    def save(
        self,
        iteration: int,
        state: Any,
        data_state: bytes,
        config_dict: dict,
        *,
        force: bool = True,
        inference: dict | None = None,
    ) -> bool:
        # orbax would re-raise a failed previous async save from inside this save; name its step instead.
        self.wait()
        os.makedirs(self.directory, exist_ok=True)
        args = ocp.args.Composite(
            **{
                STATE: ocp.args.StandardSave(state),
                DATA: grain_checkpoint.CheckpointSave(DataIterState(data_state)),
                CONFIG: ocp.args.JsonSave(config_dict),
                FINGERPRINT: ocp.args.JsonSave(state_fingerprint(state)),
                **({INFERENCE: ocp.args.JsonSave(inference)} if inference is not None else {}),
            }
        )
        saved = self.manager.save(iteration, args=args, force=force)
        if saved:
            self._in_flight = iteration
            logging.info("checkpoint %d: save started (%s)", iteration, self.step_dir(iteration))
        return saved

    def wait(self) -> None:
        """Block until async saves are on disk; a failed background save raises ``CheckpointError``."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # any background failure (OSError, tensorstore errors) means not saved
            step, self._in_flight = self._in_flight, None
            where = self.step_dir(step) if step is not None else self.directory
            raise CheckpointError(
                f"checkpoint {step}: save to {where} failed ({first_line(e)}); earlier checkpoints are intact"
            ) from e
        self._in_flight = None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def step_dir(self, iteration: int) -> str:
        return os.path.join(self.directory, str(iteration))

    # -- restore -------------------------------------------------------------------------------

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def _saved_arrays(self, iteration: int) -> dict[str, Any]:
        return _flat_arrays(self.manager.item_metadata(iteration)[STATE])

    def check_compatible(
        self, iteration: int, abstract_state: Any, *, prefix: str = "", saved: dict[str, Any] | None = None
    ) -> None:
        """Raise ``CheckpointMismatchError`` naming the arrays whose key, shape or dtype differ from the model.

        ``prefix`` (e.g. ``"params"``) compares only that part of the saved state; ``saved`` is the
        checkpoint's already-read array metadata. Unreadable metadata raises whatever orbax raises
        (that is corruption, not a mismatch).
        """
        if saved is None:
            saved = self._saved_arrays(iteration)
        if prefix:
            saved = {k[len(prefix) + 1 :]: v for k, v in saved.items() if k.startswith(prefix + ".")}
        want = _flat_arrays(abstract_state)
        missing = sorted(set(want) - set(saved))
        extra = sorted(set(saved) - set(want))
        differ = [
            f"{k} {tuple(saved[k].shape)} {np.dtype(saved[k].dtype).name} vs model {tuple(want[k].shape)} "
            f"{np.dtype(want[k].dtype).name}"
            for k in sorted(set(want) & set(saved))
            if tuple(saved[k].shape) != tuple(want[k].shape) or np.dtype(saved[k].dtype) != np.dtype(want[k].dtype)
        ]
        if missing or extra or differ:
            parts = [
                f"{len(names)} {what}: {_listing(names)}"
                for what, names in (("array(s) differ", differ), ("missing", missing), ("unexpected", extra))
                if names
            ]
            raise CheckpointMismatchError(
                f"checkpoint {self.step_dir(iteration)} was written for another model ({'; '.join(parts)})"
            )

    def verify(self, iteration: int, state: Any) -> None:
        """Raise ``CorruptCheckpointError`` if ``state`` differs from the fingerprint saved with it."""
        verify_fingerprint(self.step_dir(iteration), state)

    def _data_state_of_other_layout(self, iteration: int) -> bytes:
        """The data position of a checkpoint written by another number of processes.

        Every process consumes the same number of global batches, so each process's file holds the
        same position; the data feed re-validates it against this run's layout.
        """
        directory = os.path.join(self.step_dir(iteration), DATA)
        files = sorted(n for n in os.listdir(directory) if _DATA_FILE.match(n))
        if not files:
            raise FileNotFoundError(f"{directory}: no data-iterator state file")
        with open(os.path.join(directory, files[0]), "rb") as f:
            data = f.read()
        logging.warning(
            "checkpoint %d: data-iterator state written by another number of processes (%s); using %s",
            iteration,
            ", ".join(files),
            files[0],
        )
        return data

    def _saved_form(self, iteration: int, abstract_state: Any) -> tuple[Any, Any]:
        """(abstract state as saved, convert to ``abstract_state``'s form), checked against the saved
        metadata (``CheckpointMismatchError``).

        The forms differ only when the checkpoint was written with the other optimizer-state form
        (``grad_accum_iter`` 1 vs > 1, see ``optimizer.adapt_accumulation_form``).
        """
        saved = self._saved_arrays(iteration)
        opt_state = getattr(abstract_state, "opt_state", None)
        adapted = None
        if opt_state is not None:
            adapted = opt_lib.adapt_accumulation_form(
                opt_state, abstract_state.params, opt_lib.saved_has_accumulator(set(saved))
            )
        if adapted is None:
            self.check_compatible(iteration, abstract_state, saved=saved)
            return abstract_state, lambda state: state
        saved_opt_state, convert = adapted
        saved_form = abstract_state.replace(opt_state=saved_opt_state)
        self.check_compatible(iteration, saved_form, saved=saved)

        def convert_state(state: Any) -> Any:
            logging.warning(
                "checkpoint %d: optimizer state written with another trainer.grad_accum_iter form; converted",
                iteration,
            )
            return state.replace(opt_state=convert(state.opt_state))

        return saved_form, convert_state

    def restore(self, iteration: int, abstract_state: Any, *, verify: bool = True) -> tuple[Any, bytes]:
        """(state, data-iterator state) of ``iteration``; ``verify`` (a collective) checks the fingerprint."""
        saved_form, convert = self._saved_form(iteration, abstract_state)
        state, data = self._restore_as_saved(iteration, saved_form)
        if verify:
            self.verify(iteration, state)
        return convert(state), data

    def _restore_as_saved(self, iteration: int, abstract_state: Any) -> tuple[Any, bytes]:
        """Restore with ``abstract_state`` as it is on disk (``_saved_form`` has checked it)."""
        holder = DataIterState()
        own_file = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        own = os.path.exists(os.path.join(self.step_dir(iteration), DATA, own_file))
        items = {STATE: ocp.args.StandardRestore(abstract_state)}
        if own:
            items[DATA] = grain_checkpoint.CheckpointRestore(holder)
        restored = self.manager.restore(iteration, args=ocp.args.Composite(**items))
        data = holder.state if own else self._data_state_of_other_layout(iteration)
        json.loads(data)  # the data-iterator state must at least parse (a damaged file raises here)
        return restored[STATE], data

    def restore_params(self, iteration: int, abstract_params: Any, *, ema: bool = False) -> Any:
        """Only the (EMA) parameters of a checkpoint, placed with ``abstract_params``' shardings and
        checked against the checkpoint's fingerprint (``CorruptCheckpointError``)."""
        field = "ema_params" if ema else "params"
        self.check_compatible(iteration, abstract_params, prefix=field)
        # The manager's state handler (StandardCheckpointHandler) cannot restore a part of the tree;
        # a PyTree checkpointer on the item directory can.
        item = {field: abstract_params}
        restored = ocp.PyTreeCheckpointer().restore(
            os.path.join(self.step_dir(iteration), STATE),
            args=ocp.args.PyTreeRestore(
                item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True
            ),
        )
        verify_fingerprint(self.step_dir(iteration), {field: restored[field]})
        return restored[field]

    def restore_config(self, iteration: int) -> dict:
        return self.manager.restore(iteration, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG]

    def restore_inference(self, iteration: int) -> dict | None:
        """The ``inference`` item (statistics, T5 reference), or None for checkpoints written without it."""
        if not os.path.isdir(os.path.join(self.step_dir(iteration), INFERENCE)):
            return None
        return self.manager.restore(iteration, args=ocp.args.Composite(**{INFERENCE: ocp.args.JsonRestore()}))[
            INFERENCE
        ]

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, bytes] | None:
        """Restore the newest good checkpoint; None if the directory holds none.

        An unreadable checkpoint is reported and the previous one tried. Unreadable ones are moved
        aside (``<iteration>.corrupt-<time>``) only once an older checkpoint has restored, i.e. when
        the storage works and the fault is theirs; if none restores, ``CheckpointError`` is raised and
        nothing is moved (a storage outage must not discard a job's checkpoints and restart it from
        scratch). A checkpoint of another model raises ``CheckpointMismatchError`` (a wrong job
        directory or config, not a damaged file) and nothing is moved either.
        """
        failed: list[tuple[int, Exception]] = []
        for iteration in reversed(self.steps()):
            error: Exception | None = None
            got = None
            convert = None
            try:
                saved_form, convert = self._saved_form(iteration, abstract_state)
            except CheckpointMismatchError:
                raise
            except Exception as e:  # unreadable metadata: a damaged checkpoint
                error = e
            if error is None:
                try:
                    got = self._restore_as_saved(iteration, saved_form)
                except Exception as e:  # any failure to read a finalised checkpoint marks it bad
                    error = e
            # The fingerprint check is a collective: only once every process has read the checkpoint.
            if _all_processes_ok(error is None):
                try:
                    self.verify(iteration, got[0])
                except Exception as e:
                    error = e
            if _all_processes_ok(error is None):
                for bad, bad_error in failed:
                    self._quarantine(bad, bad_error)
                return iteration, convert(got[0]), got[1]
            error = error or RuntimeError("unreadable on another process")
            msg = f"checkpoint {self.step_dir(iteration)} is unreadable ({type(error).__name__}: {first_line(error, 200)})"
            logging.warning("%s; trying the previous checkpoint", msg)
            if jax.process_index() == 0:
                print(f"warning: {msg}; trying the previous checkpoint", flush=True)
            failed.append((iteration, error))
        if failed:
            listed = "; ".join(f"{it}: {type(e).__name__}: {first_line(e, 120)}" for it, e in failed[:3])
            raise CheckpointError(
                f"no checkpoint in {self.directory} can be restored ({listed}); nothing was moved or deleted: "
                "fix the storage, or move the damaged step directories away to start over"
            )
        return None

    def _quarantine(self, iteration: int, error: Exception) -> None:
        src = self.step_dir(iteration)
        if self.read_only:  # another run's directory: skip the checkpoint but leave it where it is
            msg = f"skipped checkpoint {src} ({type(error).__name__}); left in place (read-only directory)"
        else:
            dst = f"{src}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
            if jax.process_index() == 0 and os.path.isdir(src):
                os.replace(src, dst)
            msg = f"skipped checkpoint {src} ({type(error).__name__}); moved aside to {dst}"
            if jax.process_count() > 1:  # every process must see the move before listing steps again
                multihost_utils.sync_global_devices(f"checkpoint_quarantine_{iteration}")
        logging.warning("%s", msg)
        if jax.process_index() == 0:
            print(f"warning: {msg}", flush=True)
        self.manager.reload()


def verify_fingerprint(step_dir: str, tree: Any) -> None:
    """Check restored arrays against the fingerprint the trainer saved in ``step_dir``.

    ``tree`` is the whole train state or a part of it keyed as in the train state (e.g.
    ``{"params": params}`` or ``{"ema_params": ...}``); only its arrays are compared. Raises
    ``CorruptCheckpointError`` naming ``step_dir`` and the differing arrays; a checkpoint written
    before fingerprints existed is accepted with a warning. A collective in multi-process jobs.
    """
    where = os.path.join(step_dir, FINGERPRINT)
    if not os.path.isdir(where):
        logging.warning("checkpoint %s has no fingerprint (older format); not verified", step_dir)
        return
    try:
        saved = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(where)
    except Exception as e:  # orbax/JSON errors on a damaged fingerprint file
        raise CorruptCheckpointError(f"checkpoint {step_dir}: unreadable fingerprint ({first_line(e)})") from e
    got = state_fingerprint(tree)
    bad = sorted(k for k in got if not isinstance(saved, dict) or saved.get(k) != got[k])
    if bad:
        raise CorruptCheckpointError(
            f"checkpoint {step_dir}: {len(bad)} array(s) differ from the fingerprint written at save time: "
            f"{_listing(bad)}"
        )


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
