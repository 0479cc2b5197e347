"""The LIBERO simulator (optional ``libero`` extra) behind the evaluation's ``VecEnv`` protocol.

Protocol of the reference's ``run_libero_eval.py``, reproduced here:

* one ``OffScreenRenderEnv`` per task, 256 x 256 renders of the agent-view and eye-in-hand cameras,
  ``env.seed(0)`` once at creation, reused for all trials of the task;
* trial ``k`` of a task: ``env.reset()``, then ``env.set_init_state(init_states[k])`` (LIBERO's 50
  fixed initial states per task), then 10 settling steps with the no-op action
  ``[0, 0, 0, 0, 0, 0, -1]`` (zero motion, gripper open) while objects come to rest;
* then at most ``max_steps`` policy steps (220 spatial, 280 object, 300 goal, 520 libero_10, 400
  libero_90); the episode succeeds when the environment reports ``done`` (task goal reached);
  an exception inside the simulator ends the episode as a failure, as in the reference;
* observation: the two camera images as rendered (upside down: the test-time preprocessing flips
  them) and proprio = gripper qpos (2) + end-effector position (3) + quaternion (4);
* actions: the policy's un-normalised 7-D chunk is executed as is. The reference applies no gripper
  post-processing (no sign flip, no binarisation): the Cosmos Policy LIBERO data keeps LIBERO's own
  gripper convention (-1 open, +1 close), which is also the no-op action's convention.

With ``num_envs`` > 1 several trials run side by side, each slot with its own environment (about
3 GB of memory per environment). Slot environments are created with ``seed(0)`` like the
reference's single one, but a slot's reset sequence differs from the single-environment run
(trials are interleaved across slots); the initial state itself comes from ``init_states`` either
way. ``num_envs=1`` reproduces the reference's order exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from cosmos_policy_jax.eval.errors import EvalInputError
from cosmos_policy_jax.eval.rollout import EpisodeSpec, Observation

SUITE_MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
NUM_SETTLE_STEPS = 10
NOOP_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)
RENDER_RESOLUTION = 256
ENV_SEED = 0


def _configure_environment() -> None:
    """Headless rendering defaults and the config file written by ``install_libero.sh``."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    if os.environ["MUJOCO_GL"] == "osmesa":
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    if "LIBERO_CONFIG_PATH" not in os.environ:
        candidate = os.path.join(sys.prefix, "libero_config")
        if os.path.isfile(os.path.join(candidate, "config.yaml")):
            os.environ["LIBERO_CONFIG_PATH"] = candidate


def libero_available() -> tuple[bool, str]:
    """(importable, reason) without importing LIBERO's heavy modules (for skips and errors)."""
    import importlib.util

    if importlib.util.find_spec("libero") is None:
        return False, "the LIBERO extra is not installed (bash cosmos_policy_jax/eval/install_libero.sh)"
    _configure_environment()
    cfg = os.path.join(os.environ.get("LIBERO_CONFIG_PATH", os.path.expanduser("~/.libero")), "config.yaml")
    if not os.path.isfile(cfg):
        return False, f"LIBERO is installed but {cfg} is missing (libero would prompt on stdin); see docs/evaluation.md"
    return True, ""


def _import_libero() -> tuple[Any, Any, Any]:
    ok, why = libero_available()
    if not ok:
        raise EvalInputError(why)
    from libero.libero import benchmark, get_libero_path
    from libero.libero.envs import OffScreenRenderEnv

    return benchmark, get_libero_path, OffScreenRenderEnv


@dataclasses.dataclass(frozen=True)
class SuiteInfo:
    name: str
    task_names: tuple[str, ...]
    instructions: tuple[str, ...]
    num_init_states: tuple[int, ...]


def suite_info(suite_name: str) -> SuiteInfo:
    benchmark, _, _ = _import_libero()
    suites = benchmark.get_benchmark_dict()
    if suite_name not in suites:
        raise EvalInputError(f"unknown LIBERO task suite {suite_name!r}; choose one of {', '.join(sorted(suites))}")
    suite = suites[suite_name]()
    tasks = [suite.get_task(i) for i in range(suite.n_tasks)]
    counts = tuple(len(suite.get_task_init_states(i)) for i in range(suite.n_tasks))
    return SuiteInfo(suite_name, tuple(t.name for t in tasks), tuple(t.language for t in tasks), counts)


def libero_episodes(info: SuiteInfo, task_ids: Sequence[int] | None, trials_per_task: int) -> list[EpisodeSpec]:
    """Trials 0..trials_per_task-1 of each task, task by task (the reference's order)."""
    ids = list(range(len(info.task_names))) if not task_ids else [int(t) for t in task_ids]
    for t in ids:
        if not 0 <= t < len(info.task_names):
            raise EvalInputError(f"--task_ids: {t} is not a task of {info.name} (0..{len(info.task_names) - 1})")
        if not 1 <= trials_per_task <= info.num_init_states[t]:
            raise EvalInputError(
                f"--trials_per_task must be in [1, {info.num_init_states[t]}] (init states of task {t}), got {trials_per_task}"
            )
    out = []
    for t in ids:
        for k in range(trials_per_task):
            out.append(EpisodeSpec(index=len(out), task=info.task_names[t], task_id=t, trial=k, seed=ENV_SEED))
    return out


def libero_proprio(obs: dict[str, Any]) -> np.ndarray:
    """gripper qpos (2) + end-effector position (3) + end-effector quaternion (4), float64."""
    return np.concatenate([obs["robot0_gripper_qpos"], obs["robot0_eef_pos"], obs["robot0_eef_quat"]]).astype(
        np.float64
    )


class LiberoVecEnv:
    """``num_envs`` LIBERO environments of one suite, stepping together."""

    def __init__(
        self,
        num_envs: int,
        suite_name: str,
        *,
        max_steps: int | None = None,
        settle_steps: int = NUM_SETTLE_STEPS,
        resolution: int = RENDER_RESOLUTION,
    ):
        benchmark, self._get_path, self._env_cls = _import_libero()
        suites = benchmark.get_benchmark_dict()
        if suite_name not in suites:
            raise EvalInputError(f"unknown LIBERO task suite {suite_name!r}; choose one of {', '.join(sorted(suites))}")
        self.suite = suites[suite_name]()
        self.suite_name = suite_name
        self.num_envs = int(num_envs)
        self.max_steps = int(max_steps if max_steps is not None else SUITE_MAX_STEPS[suite_name])
        self.settle_steps = int(settle_steps)
        self.resolution = int(resolution)
        self._envs: list[Any] = [None] * self.num_envs
        self._env_task: list[int | None] = [None] * self.num_envs
        self._init_states: dict[int, Any] = {}
        self._obs: list[dict[str, Any] | None] = [None] * self.num_envs
        self._texts = [""] * self.num_envs
        self.steps = np.zeros(self.num_envs, np.int64)
        self.done = np.ones(self.num_envs, bool)
        self.success = np.zeros(self.num_envs, bool)
        self.errors: list[str | None] = [None] * self.num_envs

    def _make_env(self, task_id: int) -> Any:
        task = self.suite.get_task(task_id)
        bddl = os.path.join(self._get_path("bddl_files"), task.problem_folder, task.bddl_file)
        env = self._env_cls(bddl_file_name=bddl, camera_heights=self.resolution, camera_widths=self.resolution)
        env.seed(ENV_SEED)  # the reference seeds once per task environment (it moves objects even with init states)
        return env

    def _observation(self) -> Observation:
        ref = next(o for o in self._obs if o is not None)
        obs = [o if o is not None else ref for o in self._obs]
        return Observation(
            images={
                "current_image": np.stack([o["agentview_image"] for o in obs]),
                "current_wrist_image": np.stack([o["robot0_eye_in_hand_image"] for o in obs]),
            },
            proprio=np.stack([libero_proprio(o) for o in obs]),
        )

    def reset(self, episodes: Sequence[EpisodeSpec | None]) -> Observation:
        if len(episodes) != self.num_envs:
            raise ValueError(f"need {self.num_envs} episode slots, got {len(episodes)}")
        if all(e is None for e in episodes):
            raise ValueError("reset needs at least one episode")
        for i, spec in enumerate(episodes):
            self.steps[i] = 0
            self.success[i] = False
            self.errors[i] = None
            if spec is None:
                self.done[i] = True
                self._texts[i] = ""
                continue
            if self._env_task[i] != spec.task_id:
                if self._envs[i] is not None:
                    self._envs[i].close()
                self._envs[i] = self._make_env(spec.task_id)
                self._env_task[i] = spec.task_id
            if spec.task_id not in self._init_states:
                self._init_states[spec.task_id] = self.suite.get_task_init_states(spec.task_id)
            env = self._envs[i]
            env.reset()
            obs = env.set_init_state(self._init_states[spec.task_id][spec.trial])
            for _ in range(self.settle_steps):
                obs, _, _, _ = env.step(list(NOOP_ACTION))
            self._obs[i] = obs
            self.done[i] = False
            self._texts[i] = self.suite.get_task(spec.task_id).language
        return self._observation()

    def step(self, actions: np.ndarray) -> tuple[Observation, np.ndarray, np.ndarray]:
        actions = np.asarray(actions, np.float64)
        if actions.shape != (self.num_envs, 7):
            raise ValueError(f"LIBERO needs actions of shape ({self.num_envs}, 7), got {actions.shape}")
        for i in np.flatnonzero(~self.done):
            try:
                obs, _, env_done, _ = self._envs[i].step(actions[i].tolist())
            except Exception as e:  # the reference counts a simulator error as a failed episode
                self.errors[i] = f"{type(e).__name__}: {e}"
                self.done[i] = True
                continue
            self._obs[i] = obs
            self.steps[i] += 1
            if env_done:
                self.success[i] = True
                self.done[i] = True
            elif self.steps[i] >= self.max_steps:
                self.done[i] = True
        return self._observation(), self.done.copy(), self.success.copy()

    def instructions(self) -> list[str]:
        return list(self._texts)

    def close(self) -> None:
        for env in self._envs:
            if env is not None:
                env.close()
        self._envs = [None] * self.num_envs
        self._env_task = [None] * self.num_envs


# ------------------------------------------------------------------------------------------------
# One process per environment: rendering dominates a LIBERO step and runs on one core, so M
# environments in M processes step (and reset) concurrently on a multi-core host.
# ------------------------------------------------------------------------------------------------


def _worker(conn: Any, suite_name: str, max_steps: int, settle_steps: int, resolution: int) -> None:
    """Serve one single-slot ``LiberoVecEnv`` over a pipe: ("reset", spec) / ("step", action) / ("close", None)."""
    # One rendering thread per process: Mesa llvmpipe otherwise starts one per core in every worker and
    # the workers fight over the cores (no effect on GPU EGL drivers). Set before any GL library loads.
    os.environ.setdefault("LP_NUM_THREADS", "1")
    env = None
    try:
        env = LiberoVecEnv(1, suite_name, max_steps=max_steps, settle_steps=settle_steps, resolution=resolution)
        conn.send(("ready", None))
        while True:
            cmd, arg = conn.recv()
            if cmd == "reset":
                obs = env.reset([arg])
                conn.send(("ok", (obs, env.instructions()[0])))
            elif cmd == "step":
                obs, done, success = env.step(arg[None])
                conn.send(("ok", (obs, bool(done[0]), bool(success[0]), env.errors[0])))
            elif cmd == "close":
                break
    except Exception as e:  # report instead of dying silently; the parent raises it
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        if env is not None:
            env.close()
        conn.close()


class ProcessLiberoVecEnv:
    """``LiberoVecEnv`` semantics with every slot's environment in its own (spawned) process."""

    def __init__(
        self,
        num_envs: int,
        suite_name: str,
        *,
        max_steps: int | None = None,
        settle_steps: int = NUM_SETTLE_STEPS,
        resolution: int = RENDER_RESOLUTION,
    ):
        import multiprocessing as mp

        _import_libero()  # fail early, with the install hint, in the parent
        if suite_name not in SUITE_MAX_STEPS:
            raise EvalInputError(
                f"unknown LIBERO task suite {suite_name!r}; choose one of {', '.join(SUITE_MAX_STEPS)}"
            )
        self.num_envs = int(num_envs)
        self.suite_name = suite_name
        self.max_steps = int(max_steps if max_steps is not None else SUITE_MAX_STEPS[suite_name])
        self.settle_steps = int(settle_steps)
        self.resolution = int(resolution)
        ctx = mp.get_context("spawn")  # never fork a process that holds JAX/XLA threads
        self._conns, self._procs = [], []
        for _ in range(self.num_envs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker,
                args=(child, suite_name, self.max_steps, self.settle_steps, self.resolution),
                daemon=True,
            )
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        for conn in self._conns:
            self._recv(conn)
        self._obs: list[Observation | None] = [None] * self.num_envs
        self._texts = [""] * self.num_envs
        self.steps = np.zeros(self.num_envs, np.int64)
        self.done = np.ones(self.num_envs, bool)
        self.success = np.zeros(self.num_envs, bool)
        self.errors: list[str | None] = [None] * self.num_envs

    @staticmethod
    def _recv(conn: Any) -> Any:
        status, payload = conn.recv()
        if status == "error":
            raise RuntimeError(f"LIBERO worker failed: {payload}")
        return payload

    def _observation(self) -> Observation:
        ref = next(o for o in self._obs if o is not None)
        obs = [o if o is not None else ref for o in self._obs]
        return Observation(
            images={k: np.concatenate([o.images[k] for o in obs]) for k in ref.images},
            proprio=np.concatenate([o.proprio for o in obs]),
        )

    def reset(self, episodes: Sequence[EpisodeSpec | None]) -> Observation:
        if len(episodes) != self.num_envs:
            raise ValueError(f"need {self.num_envs} episode slots, got {len(episodes)}")
        if all(e is None for e in episodes):
            raise ValueError("reset needs at least one episode")
        for i, spec in enumerate(episodes):
            if spec is not None:
                self._conns[i].send(("reset", spec))
        for i, spec in enumerate(episodes):
            self.steps[i] = 0
            self.success[i] = False
            self.errors[i] = None
            self.done[i] = spec is None
            if spec is None:
                self._texts[i] = ""
                continue
            self._obs[i], self._texts[i] = self._recv(self._conns[i])
        return self._observation()

    def step(self, actions: np.ndarray) -> tuple[Observation, np.ndarray, np.ndarray]:
        actions = np.asarray(actions, np.float64)
        if actions.shape != (self.num_envs, 7):
            raise ValueError(f"LIBERO needs actions of shape ({self.num_envs}, 7), got {actions.shape}")
        running = np.flatnonzero(~self.done)
        for i in running:
            self._conns[i].send(("step", actions[i]))
        for i in running:
            self._obs[i], done, success, error = self._recv(self._conns[i])
            self.steps[i] += 0 if error else 1
            self.done[i], self.success[i], self.errors[i] = done, success, error
        return self._observation(), self.done.copy(), self.success.copy()

    def instructions(self) -> list[str]:
        return list(self._texts)

    def close(self) -> None:
        for conn, proc in zip(self._conns, self._procs):
            with contextlib.suppress(BrokenPipeError, OSError):  # the worker may be gone already
                conn.send(("close", None))
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
        self._conns, self._procs = [], []
