"""Batched closed-loop rollouts: M environments step together, one policy call samples all their chunks.

Episodes run in waves of ``env.num_envs``: a wave resets every slot (a slot without an episode in
the last wave stays idle), then repeats *query, execute open loop*: the policy receives the
preprocessed observations of all M slots in one batch and returns one action chunk per slot; the
first ``num_open_loop_steps`` actions of each chunk are executed before the next query (the
reference's ``num_open_loop_steps``; its action queue keeps the *first* actions of a chunk). A slot
whose episode has ended keeps its last observation and ignores actions until the wave is over, so
the batch shape (and the compiled policy) never changes. Environments decide when an episode ends
(success or step limit) and whether it succeeded.

The environment side is the small ``VecEnv`` protocol below; ``demo_env.DemoVecEnv`` and
``libero_env.LiberoVecEnv`` implement it. The policy side is ``policies.Policy``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from cosmos_policy_jax.eval import preprocess
from cosmos_policy_jax.eval.policies import Policy, PolicyInput


@dataclasses.dataclass(frozen=True)
class EpisodeSpec:
    """What defines one evaluation episode; environments read the fields they know."""

    index: int  # position in the evaluation's episode list
    task: str  # task name (LIBERO: the suite's task name; demo: the target colour)
    task_id: int = 0
    trial: int = 0  # trial number within the task (LIBERO: init-state index)
    seed: int = 0  # environment seed (demo: the world; LIBERO: unused, the init state defines it)


@dataclasses.dataclass
class Observation:
    """Raw observations of all M slots as the simulator renders them (before test-time preprocessing)."""

    images: dict[str, np.ndarray]  # latent-layout image slot -> (M, H, W, 3) uint8
    proprio: np.ndarray  # (M, P) float, raw (un-normalised) units


class VecEnv(Protocol):
    """M environments that reset and step together."""

    num_envs: int

    def reset(self, episodes: Sequence[EpisodeSpec | None]) -> Observation:
        """Start one episode per slot (``None``: leave the slot idle for this wave)."""
        ...

    def step(self, actions: np.ndarray) -> tuple[Observation, np.ndarray, np.ndarray]:
        """Apply ``(M, action_dim)`` actions to running slots -> (observation, done (M,), success (M,))."""
        ...

    def instructions(self) -> list[str]:
        """The language instruction of each slot's current episode ('' for idle slots)."""
        ...

    def close(self) -> None: ...


@dataclasses.dataclass
class EpisodeResult:
    spec: EpisodeSpec
    instruction: str
    success: bool
    length: int  # policy-controlled environment steps taken
    values: list[float] = dataclasses.field(default_factory=list)  # predicted values at each query
    error: str | None = None  # simulator error that ended the episode (counted as a failure)
    frames: dict[str, list[np.ndarray]] | None = None  # display frames per camera slot, if recorded
    # Per policy step, if kept: {"images": {slot: [frame]}, "proprio": [...], "actions": [...]} (rollout files)
    steps: dict[str, Any] | None = None


@dataclasses.dataclass
class Timing:
    policy_calls: int = 0
    first_call_s: float = 0.0  # includes compilation
    policy_s: float = 0.0  # all calls after the first
    preprocess_s: float = 0.0
    env_steps: int = 0  # slot-steps of running episodes
    env_s: float = 0.0
    reset_s: float = 0.0
    wall_s: float = 0.0

    def summary(self, num_envs: int) -> dict[str, float]:
        later = max(self.policy_calls - 1, 0)
        return {
            "policy_calls": self.policy_calls,
            "policy_first_call_s": round(self.first_call_s, 4),
            "policy_s_per_call": round(self.policy_s / later, 4) if later else round(self.first_call_s, 4),
            "policy_calls_per_s": round(later / self.policy_s, 3) if later and self.policy_s > 0 else None,
            "policy_chunks_per_s": round(later * num_envs / self.policy_s, 3) if later and self.policy_s > 0 else None,
            "preprocess_s": round(self.preprocess_s, 3),
            "env_steps": self.env_steps,
            "env_s": round(self.env_s, 3),
            "env_steps_per_s": round(self.env_steps / self.env_s, 3) if self.env_s > 0 else None,
            "reset_s": round(self.reset_s, 3),
            "wall_s": round(self.wall_s, 3),
        }


def _fill_idle(x: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Copy the first active slot into idle ones so that every row of a batch is a valid input."""
    if active.all() or not active.any():
        return x
    x = x.copy()
    x[~active] = x[np.flatnonzero(active)[0]]
    return x


@dataclasses.dataclass
class _Wave:
    """One wave: up to M episodes stepping together, and what is kept of them."""

    specs: list[EpisodeSpec | None]  # per slot; None: idle
    active: np.ndarray  # (M,) slots with an episode
    texts: list[str]  # instruction per slot
    emb: np.ndarray  # (M, L, D) text embeddings (idle slots repeat the first active one)
    obs: Observation
    done: np.ndarray  # (M,) idle slots start done
    success: np.ndarray
    lengths: np.ndarray
    values: list[list[float]]
    frames: list[dict[str, list[np.ndarray]] | None]  # display frames of recorded episodes
    kept: list[dict[str, Any] | None]  # steps kept for rollout files
    queue: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0, 0)))  # (M, open loop, dim)
    pos: int = 0  # next action of the queue


def _start_wave(env: VecEnv, specs: list[EpisodeSpec | None], embedding: Callable[[str], np.ndarray],
                image_spec: preprocess.ImagePreprocessing, record: Callable[[EpisodeSpec], bool],
                keep_steps: Callable[[EpisodeSpec], bool], timing: Timing) -> _Wave:  # fmt: skip
    m = env.num_envs
    specs = specs + [None] * (m - len(specs))
    active = np.array([s is not None for s in specs])
    t0 = time.perf_counter()
    obs = env.reset(specs)
    timing.reset_s += time.perf_counter() - t0
    texts = env.instructions()
    first = texts[int(np.flatnonzero(active)[0])]
    return _Wave(
        specs=specs,
        active=active,
        texts=texts,
        emb=np.stack([embedding(texts[i] if active[i] else first) for i in range(m)]),
        obs=obs,
        done=~active,
        success=np.zeros(m, bool),
        lengths=np.zeros(m, np.int64),
        values=[[] for _ in range(m)],
        frames=[
            {k: [_display(v[i], image_spec)] for k, v in obs.images.items()} if s is not None and record(s) else None
            for i, s in enumerate(specs)
        ],
        kept=[
            {"images": {k: [] for k in obs.images}, "proprio": [], "actions": []}
            if s is not None and keep_steps(s)
            else None
            for s in specs
        ],
    )


def _query(policy: Policy, wave: _Wave, image_spec: preprocess.ImagePreprocessing, seed: int,
           num_open_loop_steps: int, timing: Timing) -> None:  # fmt: skip
    """One batched policy call for all slots; refills the action queue."""
    m = len(wave.specs)
    t0 = time.perf_counter()
    images = {
        k: preprocess.preprocess_images(_fill_idle(v, wave.active), image_spec) for k, v in wave.obs.images.items()
    }
    batch = PolicyInput(images=images, proprio=_fill_idle(wave.obs.proprio, wave.active), embedding=wave.emb)
    t1 = time.perf_counter()
    out = policy(batch, seed=seed)
    t2 = time.perf_counter()
    timing.preprocess_s += t1 - t0
    if timing.policy_calls == 0:
        timing.first_call_s = t2 - t1
    else:
        timing.policy_s += t2 - t1
    timing.policy_calls += 1
    actions = np.asarray(out.actions)
    if actions.ndim != 3 or actions.shape[0] != m:
        raise ValueError(f"policy returned actions of shape {actions.shape}, expected ({m}, chunk, dim)")
    wave.queue = actions[:, :num_open_loop_steps]
    wave.pos = 0
    if out.value is not None:
        for i in np.flatnonzero(~wave.done):
            wave.values[i].append(float(out.value[i]))


def _step(env: VecEnv, wave: _Wave, image_spec: preprocess.ImagePreprocessing, timing: Timing) -> None:
    """Execute the next queued action in every slot (finished slots ignore it)."""
    running = ~wave.done
    for i in np.flatnonzero(running):
        if wave.kept[i] is not None:
            for k, v in wave.obs.images.items():
                wave.kept[i]["images"][k].append(_display(v[i], image_spec))
            wave.kept[i]["proprio"].append(np.array(wave.obs.proprio[i]))
            wave.kept[i]["actions"].append(np.array(wave.queue[i, wave.pos]))
    t0 = time.perf_counter()
    wave.obs, step_done, step_success = env.step(wave.queue[:, wave.pos])
    timing.env_s += time.perf_counter() - t0
    wave.pos += 1
    timing.env_steps += int(running.sum())
    wave.lengths[running] += 1
    wave.success |= running & np.asarray(step_success, bool)
    wave.done |= np.asarray(step_done, bool)
    for i in np.flatnonzero(running):
        if wave.frames[i] is not None:
            for k, v in wave.obs.images.items():
                wave.frames[i][k].append(_display(v[i], image_spec))


def _wave_results(env: VecEnv, wave: _Wave) -> list[EpisodeResult]:
    errors = getattr(env, "errors", None) or [None] * len(wave.specs)
    results = []
    for i, spec in enumerate(wave.specs):
        if spec is not None:
            results.append(
                EpisodeResult(
                    spec,
                    wave.texts[i],
                    bool(wave.success[i]),
                    int(wave.lengths[i]),
                    values=wave.values[i],
                    frames=wave.frames[i],
                    error=errors[i],
                    steps=wave.kept[i],
                )
            )
    return results


def run_episodes(
    env: VecEnv,
    policy: Policy,
    episodes: Sequence[EpisodeSpec],
    *,
    num_open_loop_steps: int,
    embed: Callable[[str], np.ndarray],
    image_spec: preprocess.ImagePreprocessing,
    record: Callable[[EpisodeSpec], bool] = lambda spec: False,
    on_episode: Callable[[EpisodeResult], None] | None = None,
    seed: int = 0,
    keep_steps: Callable[[EpisodeSpec], bool] = lambda spec: False,
) -> tuple[list[EpisodeResult], Timing]:
    """Roll ``policy`` out for every episode, ``env.num_envs`` at a time; results in episode order.

    ``embed(instruction)`` gives the ``(L, D)`` text embedding; ``record(spec)`` selects episodes whose
    display frames are kept; ``keep_steps(spec)`` those whose observations (upright, unprocessed), proprio
    and executed actions are kept for rollout files; ``seed`` is passed to every policy call (the reference samples every
    query with the same seed).
    """
    if num_open_loop_steps < 1:
        raise ValueError(f"num_open_loop_steps must be >= 1, got {num_open_loop_steps}")
    m = env.num_envs
    cache: dict[str, np.ndarray] = {}
    timing = Timing()
    results: list[EpisodeResult] = []
    start_all = time.perf_counter()

    def embedding(text: str) -> np.ndarray:
        if text not in cache:
            cache[text] = np.asarray(embed(text), np.float32)
        return cache[text]

    for start in range(0, len(episodes), m):
        wave = _start_wave(env, list(episodes[start : start + m]), embedding, image_spec, record, keep_steps, timing)
        while not wave.done.all():
            if wave.pos >= wave.queue.shape[1]:
                _query(policy, wave, image_spec, seed, num_open_loop_steps, timing)
            _step(env, wave, image_spec, timing)
        for res in _wave_results(env, wave):
            results.append(res)
            if on_episode is not None:
                on_episode(res)
    timing.wall_s = time.perf_counter() - start_all
    return results, timing


def _display(image: np.ndarray, spec: preprocess.ImagePreprocessing) -> np.ndarray:
    """A frame for videos: upright (flipped like the policy input), otherwise as rendered."""
    return preprocess.flip_vertical(image) if spec.flip else image.copy()


def summarize(results: Sequence[EpisodeResult]) -> dict[str, Any]:
    """Success rate overall and per task, episode lengths."""
    if not results:
        return {"episodes": 0, "success_rate": None}
    succ = np.array([r.success for r in results])
    lengths = np.array([r.length for r in results])
    per_task: dict[str, dict[str, Any]] = {}
    for r in results:
        t = per_task.setdefault(
            r.spec.task, {"task_id": r.spec.task_id, "instruction": r.instruction, "episodes": 0, "successes": 0}
        )
        t["episodes"] += 1
        t["successes"] += int(r.success)
    for t in per_task.values():
        t["success_rate"] = t["successes"] / t["episodes"]
    return {
        "episodes": len(results),
        "successes": int(succ.sum()),
        "success_rate": float(succ.mean()),
        # Binomial standard error, to read differences between runs.
        "success_rate_stderr": float(np.sqrt(succ.mean() * (1 - succ.mean()) / len(results))),
        "mean_length": float(lengths.mean()),
        "mean_length_success": float(lengths[succ].mean()) if succ.any() else None,
        "per_task": per_task,
    }
