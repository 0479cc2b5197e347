"""The bad-input catalogue: each case stops the trainer with a non-zero exit (or a typed exception) and a
one-line message naming the offending key, file or value, and leaves an existing job directory exactly
as it was (every file hashed before and after, no file added).

Cases already tested next to their code are referenced from ``ELSEWHERE`` (the table test checks that
each referenced test exists); the others run the training CLI here against a copy of a finished job.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import socket
from collections.abc import Callable
from pathlib import Path

import h5py
import pytest

from tests.fixture_utils import snapshot
from tests.reliability import helpers

# case -> tests elsewhere in the suite that cover it (with the same three checks on their level).
ELSEWHERE: dict[str, list[str]] = {
    "unknown config key (dry run, no config.yaml written)": [
        "tests/test_train_cli.py::test_typo_in_override_fails_naming_the_key"
    ],
    "wrong type, negative per-device batch (dry run)": ["tests/test_train_cli.py::test_wrong_type_and_bad_value_fail"],
    "missing dataset directory (reader)": ["tests/data/test_data_errors.py::test_missing_dataset_directory"],
    "HDF5 file missing a required dataset (reader)": [
        "tests/data/test_data_errors.py::test_hdf5_missing_required_dataset",
        "tests/data/test_data_errors.py::test_rollout_missing_proprio",
        "tests/data/test_data_errors.py::test_rollout_missing_camera",
    ],
    "truncated HDF5": [
        "tests/data/test_data_errors.py::test_truncated_hdf5",
        "tests/data/test_data_errors.py::test_truncated_rollout_fails_at_read_time_with_the_file_name",
    ],
    "image of the wrong size": [
        "tests/data/test_data_errors.py::test_cameras_of_different_sizes",
        "tests/data/test_data_errors.py::test_jpeg_frame_of_the_wrong_size",
        "tests/data/test_data_errors.py::test_image_with_wrong_channels",
    ],
    "T5 pickle missing an instruction": ["tests/data/test_data_errors.py::test_t5_missing_instruction"],
    "T5 pickle that tries to run code": ["tests/data/test_data_errors.py::test_t5_pickle_that_runs_code"],
    "out of disk during a checkpoint save": [
        "tests/reliability/test_bad_input.py::test_out_of_disk_during_a_checkpoint_save"
    ],
    "no checkpoint restorable": [
        "tests/reliability/test_checkpoints.py::test_no_restorable_checkpoint_fails_without_moving_anything"
    ],
    # issue 19
    "crafted .pt/.pkl tensor views outside their storage or over the byte budget (convert, T5 tool)": [
        "tests/common/test_torch_pickle_bounds.py::test_convert_cli_refuses_crafted_checkpoints",
        "tests/common/test_torch_pickle_bounds.py::test_t5_tool_refuses_crafted_files",
    ],
    "bad --output of convert": ["tests/convert/test_cli.py::test_bad_output_paths_exit_2_before_any_work"],
    "bad --output of eval": ["tests/reliability/test_bad_input.py::test_eval_output_that_cannot_be_written"],
    "T5 tool: bad input exits 2": ["tests/data/test_t5.py::test_cli_list_and_convert"],
    "second run on a job directory in use": [
        "tests/reliability/test_job_dir.py::test_two_runs_on_one_job_dir_one_is_refused_naming_the_holder"
    ],
    "resume asked to stop at an iteration already passed": [
        "tests/reliability/test_job_dir.py::test_torn_metrics_resume_and_a_stop_already_passed"
    ],
    "non-numeric, wrongly typed or NaN actions in a dataset": [
        "tests/data/test_data_errors.py::test_non_numeric_or_non_finite_actions_name_file_and_key"
    ],
    "dataset root that is a file (reader)": ["tests/data/test_data_errors.py::test_dataset_root_that_is_a_file"],
    "eval of a checkpoint that differs from its fingerprint": [
        "tests/training/test_checkpoint_fingerprint.py::test_eval_loader_refuses_a_checkpoint_that_differs_from_its_fingerprint"
    ],
}


@dataclasses.dataclass
class Ctx:
    reference: Path  # a finished tiny job (checkpoints 4, 6, 8 and export/net.safetensors)
    job: Path  # the existing job directory the failing command is pointed at
    tmp: Path
    port: int = 0


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    args: Callable[[Ctx], list[str]]  # overrides after the tiny config's
    needles: Callable[[Ctx], tuple[str, ...]]  # what the one-line message must name
    checkpoints: bool = False  # whether the existing job keeps its checkpoints
    prepare: Callable[[Ctx], None] | None = None
    config: str = "tiny"  # the config argument


def _libero_fixture_args(ctx: Ctx) -> list[str]:
    """The libero layout at test size on a copy of the fixture dataset whose demo file lost a dataset."""
    root = ctx.tmp / "libero_rollouts"
    return [
        f"--config.dataloader_train.dataset.data_dir={root}/success_only",
        f"--config.dataloader_train.dataset.rollout_data_dir={root}/all_episodes",
        f"--config.dataloader_train.dataset.t5_text_embeddings_path={root}/success_only/t5_embeddings.pkl",
        "--config.dataloader_train.dataset.chunk_size=8",
    ]


def _break_fixture_hdf5(ctx: Ctx) -> None:
    import shutil

    from tests.fixture_utils import fixture_path

    root = ctx.tmp / "libero_rollouts"
    shutil.copytree(fixture_path("libero_rollouts"), root)
    for path in sorted((root / "success_only").rglob("*.hdf5")):
        with h5py.File(path, "a") as f:
            if "agentview_rgb" in f["data/demo_0/obs"]:
                del f["data/demo_1/robot_states"]
                ctx.broken = path.name  # type: ignore[attr-defined]
                return
    raise AssertionError("the fixture has no raw-image demo file")


def _a_file(ctx: Ctx) -> None:
    (ctx.tmp / "a_file").write_text("not a directory")


def _nan_weights(ctx: Ctx) -> None:
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(ctx.reference / "export" / "net.safetensors"))
    key = next(k for k in sorted(weights) if k.endswith(".weight"))  # a trained weight, not a counter
    weights[key] = weights[key].copy()
    weights[key].flat[0] = float("nan")
    save_file(weights, str(ctx.tmp / "nan_weights.safetensors"))


CASES = [
    Case("unknown config key", lambda c: ["--config.trainer.max_itr=5"], lambda c: ("trainer.max_itr", "max_iter")),
    Case("wrong type", lambda c: ["--config.trainer.max_iter=abc"], lambda c: ("trainer.max_iter", "abc")),
    Case(
        "negative batch",
        lambda c: ["--config.dataloader_train.global_batch_size=-4"],
        lambda c: ("dataloader_train.global_batch_size", "-4"),
    ),
    Case(
        "mesh product not equal to the device count",
        lambda c: ["--config.parallel.data=3"],
        lambda c: ("parallel", "data=3", "device count 4"),
    ),
    Case(
        "batch not divisible by the data-parallel size",
        lambda c: ["--config.dataloader_train.global_batch_size=6"],
        lambda c: ("dataloader_train.global_batch_size", "6", "data-parallel size 4"),
    ),
    Case(
        "grad_accum_iter 0",
        lambda c: ["--config.trainer.grad_accum_iter=0"],
        lambda c: ("trainer.grad_accum_iter", "got 0"),
    ),
    Case(
        "missing dataset directory",
        lambda c: [
            "--config.dataloader_train.dataset.kind=libero",
            f"--config.dataloader_train.dataset.data_dir={c.tmp}/no_such_dataset",
        ],
        lambda c: ("dataloader_train.dataset.data_dir", f"{c.tmp}/no_such_dataset"),
    ),
    Case(
        "HDF5 file missing a required dataset (through the trainer, after the model is built)",
        _libero_fixture_args,
        lambda c: ("DataError", c.broken, "data/demo_1/robot_states"),  # type: ignore[attr-defined]
        prepare=_break_fixture_hdf5,
        config="libero,tiny,fp32",
    ),
    Case(
        "checkpoint.load_path that does not exist",
        lambda c: [f"--config.checkpoint.load_path={c.tmp}/no_such_model.pt"],
        lambda c: ("checkpoint.load_path", f"{c.tmp}/no_such_model.pt"),
    ),
    Case(
        "checkpoint.resume_from_checkpoint that does not exist",
        lambda c: [f"--config.checkpoint.resume_from_checkpoint={c.tmp}/no_such_run/checkpoints"],
        lambda c: ("checkpoint.resume_from_checkpoint", f"{c.tmp}/no_such_run/checkpoints"),
    ),
    Case(
        "load_path: exported weights of another model size",
        lambda c: [
            f"--config.checkpoint.load_path={c.reference}/export/net.safetensors",
            "--config.model.net.model_channels=64",
        ],
        lambda c: ("WeightImportError", "mismatched shapes", "x_embedder"),
    ),
    Case(
        "load_path: orbax checkpoint of another model size",
        lambda c: [f"--config.checkpoint.load_path={c.reference}/checkpoints", "--config.model.net.model_channels=64"],
        lambda c: ("CheckpointMismatchError", f"{c.reference}/checkpoints/8", "array(s) differ:", "vs model"),
    ),
    Case(
        "resuming a job whose checkpoints are of another model size (nothing moved aside)",
        lambda c: ["--config.model.net.model_channels=64", "--config.trainer.allow_config_drift=True"],
        lambda c: ("CheckpointMismatchError", f"{c.job}/checkpoints/8", "array(s) differ", "vs model"),
        checkpoints=True,
    ),
    Case(
        "job path that is a file",
        lambda c: [f"--config.job.path_local={c.tmp}/a_file"],
        lambda c: ("JobDirectoryError", f"{c.tmp}/a_file is a file, not a directory"),
        prepare=_a_file,
    ),
    Case(
        "data root that is a file",
        lambda c: [
            "--config.dataloader_train.dataset.kind=libero",
            *(
                f"--config.dataloader_train.dataset.{key}={c.tmp}/a_file"
                for key in ("data_dir", "rollout_data_dir", "t5_text_embeddings_path")
            ),
        ],
        lambda c: ("DataError", f"{c.tmp}/a_file", "is a file, not a directory", "data_dir"),
        prepare=_a_file,
    ),
    Case(
        "non-numeric device ids",
        lambda c: ["--local_device_ids=0,x"],
        lambda c: ("--local_device_ids", "0,x"),
    ),
    Case(
        "non-finite weights in checkpoint.load_path",
        lambda c: [f"--config.checkpoint.load_path={c.tmp}/nan_weights.safetensors"],
        lambda c: ("WeightImportError", f"{c.tmp}/nan_weights.safetensors", "non-finite values (NaN/inf) in 1 array"),
        prepare=_nan_weights,
    ),
    Case(
        "restarting a job with a shape-changing key (stopped before any model is built)",
        lambda c: ["--config.model.net.model_channels=64"],
        lambda c: ("model.net.model_channels: 128 -> 64", "allow_config_drift"),
        checkpoints=True,
    ),
    Case(
        "coordinator port already in use",
        lambda c: [f"--coordinator_address=127.0.0.1:{c.port}", "--num_processes=2", "--process_id=0"],
        lambda c: (f"port {c.port}", "already in use", f"--coordinator_address=127.0.0.1:{c.port + 1}"),
    ),
]


def test_catalogue_has_at_least_15_cases_and_every_reference_exists():
    names = [c.name for c in CASES] + list(ELSEWHERE)
    assert len(set(names)) == len(names) and len(names) >= 15, names
    for case, node_ids in ELSEWHERE.items():
        for node_id in node_ids:
            path, test = node_id.split("::")
            module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
            assert callable(getattr(module, test, None)), f"{case}: {node_id} does not exist"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_through_the_cli(case: Case, reference_run, compile_cache, tmp_path):
    ctx = Ctx(reference=reference_run, job=tmp_path / "job", tmp=tmp_path)
    helpers.copy_job(reference_run, ctx.job, checkpoints=case.checkpoints)
    if case.prepare is not None:
        case.prepare(ctx)
    before = snapshot(ctx.job)
    with socket.socket() as busy:  # holds a port for the coordinator case
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ctx.port = busy.getsockname()[1]
        args = helpers.tiny_args(ctx.job, helpers.REFERENCE_ITERS + 2, *case.args(ctx), config=case.config)
        r = helpers.run(args, helpers.train_env(compile_cache), tmp_path / "run", timeout=300)
    assert r.returncode == 2, r.tail()
    lines = r.error_lines()
    assert len(lines) == 1, r.tail()
    for needle in case.needles(ctx):
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert snapshot(ctx.job) == before


@pytest.mark.slow
def test_out_of_disk_during_a_checkpoint_save(compile_cache, tmp_path):
    """ENOSPC while orbax commits checkpoint 4 in its background thread: exit 2 naming the checkpoint and
    the reason; checkpoint 2 (the only one kept, keep_last=1) is intact and the next start resumes it."""
    job = tmp_path / "job"
    env = helpers.train_env(compile_cache)
    args = helpers.tiny_args(job, 4, "--config.checkpoint.keep_last=1")
    r = helpers.run(args, {**env, "FAULT_ENOSPC_AT_COMMIT": "4"}, tmp_path / "enospc", module=helpers.FAULT_TRAIN)
    assert r.returncode == 2, r.tail()
    (line,) = r.error_lines()
    assert f"CheckpointError: checkpoint 4: save to {job}/checkpoints/4 failed (No space left on device)" in line
    assert "earlier checkpoints are intact" in line
    # the error line is the last thing said, and no background thread's traceback surrounds it
    assert r.stderr().rstrip().splitlines()[-1] == line and "Traceback" not in r.stderr(), r.tail()
    assert "2" in helpers.checkpoint_steps(job) and "4" not in helpers.checkpoint_steps(job)
    again = helpers.run(args, env, tmp_path / "restart")
    assert again.returncode == 0, again.tail()
    assert f"resuming from {job}/checkpoints/2" in again.stdout()
    assert os.path.exists(job / "export" / "net.safetensors")


def test_eval_output_that_cannot_be_written(tmp_path):
    """``eval --output`` under a file: one line naming it, exit 2, before any episode runs."""
    import subprocess
    import sys

    (tmp_path / "a_file").write_text("x")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(helpers.ROOT)}
    args = ["--config=configs/cosmos_policy.py:demo", "--policy=random", f"--output={tmp_path}/a_file/eval"]
    res = subprocess.run(
        [sys.executable, "-m", "cosmos_policy_jax.eval", *args, "--episodes=1"],
        cwd=helpers.ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 2 and len(errors) == 1, res.stderr[-2000:]
    assert f"--output {tmp_path}/a_file/eval" in errors[0] and "Traceback" not in res.stderr
