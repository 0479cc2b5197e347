"""The demo task: a point agent on a 2D table must reach the coloured target named in its instruction.

World: the table is the square ``[-1, 1]^2``. ``num_objects`` discs of distinct saturated colours
(one is the named target, the others distractors) lie at random, well separated positions; the
agent (a white disc) starts at a random position away from the target. Action = planar velocity
(the first two entries of the action vector; any further entries are ignored), clipped to
``±max_speed`` per axis; the agent stays on the table. The episode succeeds (reward 1, done) as
soon as the agent is within ``success_radius`` of the target centre, and ends unsuccessfully after
``max_steps`` steps.

Observation (what a policy sees, in the LIBERO roles): ``primary_image`` = top view of the whole
table, ``wrist_image`` = a zoomed view centred on the agent (the "eye in hand"), both uint8
``(S, S, 3)``, rendered upright (no vertical flip is needed at test time, unlike LIBERO);
``proprio`` = the agent position ``(x, y)`` float32; ``instruction`` = ``"reach the <colour> target"``.

The design keeps the needed information easy to recover through a small random VAE at 32-64 px:
large saturated discs on a grey table, the agent position in the proprio, and a scripted expert
(``expert_action``) whose action is the clipped straight-line velocity to the target, so the action
chunk is a simple function of (image, instruction, proprio).

Several environments step together through ``DemoReachVecEnv`` (batched closed-loop evaluation).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

# Saturated, well separated colours; the agent is white, the table grey, the floor dark.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 70, 235),
    "yellow": (245, 220, 20),
}
AGENT_COLOR = (255, 255, 255)
TABLE_COLOR = (128, 128, 128)
FLOOR_COLOR = (32, 32, 32)


# Home positions of the colours for object_layout="fixed" (the four quadrants of the table).
HOMES: dict[str, tuple[float, float]] = {
    "red": (-0.55, 0.55),
    "green": (0.55, 0.55),
    "blue": (-0.55, -0.55),
    "yellow": (0.55, -0.55),
}


def instruction_for(color: str) -> str:
    """The instruction of the task whose target has ``color``."""
    if color not in COLORS:
        raise ValueError(f"unknown demo colour {color!r}; choose one of {', '.join(COLORS)}")
    return f"reach the {color} target"


def task_names() -> list[str]:
    """Task names in a fixed order (the target colours)."""
    return list(COLORS)


@dataclasses.dataclass(frozen=True)
class DemoReachConfig:
    """Geometry and limits of the demo world (table coordinates are in [-1, 1])."""

    image_size: int = 32
    num_objects: int = 3  # the target plus num_objects - 1 distractors
    max_steps: int = 50
    max_speed: float = 0.06  # per-axis velocity bound per step
    object_radius: float = 0.24
    agent_radius: float = 0.11
    success_radius: float = 0.2
    place_extent: float = 0.72  # object centres lie in [-place_extent, place_extent]^2
    min_object_separation: float = 0.7
    min_start_distance: float = 0.8  # agent start to target centre
    primary_half_width: float = 1.05  # the top view shows a thin floor border around the table
    wrist_half_width: float = 0.6
    supersample: int = 3  # anti-aliasing factor of the renderer
    action_dim: int = 2
    proprio_dim: int = 2
    # "random": objects anywhere (the target must be found in the image); "fixed": every colour has a
    # home position (HOMES) plus up to `position_jitter` of noise, so instruction + proprio suffice.
    object_layout: str = "random"
    position_jitter: float = 0.08

    def __post_init__(self):
        if self.object_layout not in ("random", "fixed"):
            raise ValueError(f"object_layout must be 'random' or 'fixed', got {self.object_layout!r}")
        if not 2 <= self.num_objects <= len(COLORS):
            raise ValueError(f"num_objects must be in [2, {len(COLORS)}], got {self.num_objects}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.action_dim < 2 or self.proprio_dim != 2:
            raise ValueError(f"need action_dim >= 2 and proprio_dim == 2, got {self.action_dim}, {self.proprio_dim}")


@dataclasses.dataclass(frozen=True)
class DemoReachState:
    """Everything that defines an episode's world (immutable; ``agent`` changes by replacement)."""

    target_color: str
    object_colors: tuple[str, ...]  # object_colors[0] == target_color
    object_positions: np.ndarray  # (num_objects, 2) float64
    agent: np.ndarray  # (2,) float64
    steps: int = 0

    @property
    def target_position(self) -> np.ndarray:
        return self.object_positions[0]


def sample_state(rng: np.random.Generator, config: DemoReachConfig, color: str | None = None) -> DemoReachState:
    """A random initial world: target + distractors at separated positions, agent away from the target."""
    names = list(COLORS)
    if color is None:
        color = names[int(rng.integers(len(names)))]
    elif color not in COLORS:
        raise ValueError(f"unknown demo colour {color!r}; choose one of {', '.join(COLORS)}")
    others = [c for c in names if c != color]
    picks = rng.permutation(len(others))[: config.num_objects - 1]
    colors = (color, *[others[i] for i in picks])
    e = config.place_extent
    if config.object_layout == "fixed":
        homes = np.asarray([HOMES[c] for c in colors], np.float64)
        j = config.position_jitter
        pos = homes + rng.uniform(-j, j, size=homes.shape)
    else:
        for _ in range(10_000):
            pos = rng.uniform(-e, e, size=(config.num_objects, 2))
            d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + np.eye(config.num_objects) * 10
            if d.min() >= config.min_object_separation:
                break
        else:  # pragma: no cover - the defaults leave plenty of room
            raise RuntimeError("could not place the demo objects; reduce min_object_separation")
    for _ in range(10_000):
        agent = rng.uniform(-0.95, 0.95, size=2)
        if np.linalg.norm(agent - pos[0]) >= config.min_start_distance:
            break
    else:  # pragma: no cover
        raise RuntimeError("could not place the demo agent; reduce min_start_distance")
    return DemoReachState(target_color=color, object_colors=colors, object_positions=pos, agent=agent)


def _interval_coverage(edges: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fraction of each pixel interval ``[edges[i], edges[i+1]]`` (either orientation) inside ``[lo, hi]``."""
    a, b = np.minimum(edges[:-1], edges[1:]), np.maximum(edges[:-1], edges[1:])
    return np.clip(np.minimum(b, hi) - np.maximum(a, lo), 0.0, None) / (b - a)


def _disc_coverage(
    xs: np.ndarray, ys: np.ndarray, center: np.ndarray, radius: float, ss: int
) -> tuple[slice, slice, np.ndarray] | None:
    """Supersampled coverage of a disc, restricted to the pixels of its bounding box (or None if off view)."""
    n = len(xs) - 1
    pix = abs(xs[1] - xs[0])
    cols = np.nonzero(
        (np.maximum(xs[:-1], xs[1:]) >= center[0] - radius) & (np.minimum(xs[:-1], xs[1:]) <= center[0] + radius)
    )[0]
    rows = np.nonzero(
        (np.maximum(ys[:-1], ys[1:]) >= center[1] - radius) & (np.minimum(ys[:-1], ys[1:]) <= center[1] + radius)
    )[0]
    if cols.size == 0 or rows.size == 0:
        return None
    c0, c1, r0, r1 = cols[0], min(cols[-1] + 1, n), rows[0], min(rows[-1] + 1, n)
    sub = (np.arange(ss) + 0.5) / ss
    px = (xs[c0] + np.sign(xs[1] - xs[0]) * pix * (np.arange(c0, c1)[:, None] - c0 + sub[None])).reshape(-1)
    py = (ys[r0] + np.sign(ys[1] - ys[0]) * pix * (np.arange(r0, r1)[:, None] - r0 + sub[None])).reshape(-1)
    inside = ((px[None, :] - center[0]) ** 2 + (py[:, None] - center[1]) ** 2) <= radius**2
    cov = inside.reshape(r1 - r0, ss, c1 - c0, ss).mean(axis=(1, 3), dtype=np.float32)
    return slice(r0, r1), slice(c0, c1), cov


def _composite_disc(img: np.ndarray, xs, ys, pos, radius: float, color, ss: int) -> None:
    hit = _disc_coverage(xs, ys, pos, radius, ss)
    if hit is not None:
        rs, cs, cov = hit
        img[rs, cs] = img[rs, cs] * (1 - cov[..., None]) + np.asarray(color, np.float32) * cov[..., None]


def _edges(config: DemoReachConfig, center: np.ndarray, half_width: float) -> tuple[np.ndarray, np.ndarray]:
    ticks = np.linspace(-1.0, 1.0, config.image_size + 1)
    return center[0] + half_width * ticks, center[1] - half_width * ticks  # columns left->right, rows top->down


def _render_scene(state: DemoReachState, config: DemoReachConfig, center: np.ndarray, half_width: float) -> np.ndarray:
    """float32 image of the floor, the table and the objects (everything but the agent)."""
    xs, ys = _edges(config, center, half_width)
    table = np.outer(_interval_coverage(ys, -1.0, 1.0), _interval_coverage(xs, -1.0, 1.0))[..., None]
    img = (np.asarray(FLOOR_COLOR, np.float32) * (1 - table) + np.asarray(TABLE_COLOR, np.float32) * table).astype(
        np.float32
    )
    # Distractors first, the target last.
    for i in range(len(state.object_colors) - 1, -1, -1):
        color = COLORS[state.object_colors[i]]
        _composite_disc(img, xs, ys, state.object_positions[i], config.object_radius, color, config.supersample)
    return img


def render_view(
    state: DemoReachState,
    config: DemoReachConfig,
    center: np.ndarray,
    half_width: float,
    *,
    scene: np.ndarray | None = None,
) -> np.ndarray:
    """uint8 ``(S, S, 3)`` image of the square window ``center ± half_width`` (row 0 = top = +y).

    Anti-aliased: each shape is composited over the previous ones with its pixel coverage
    (analytic for the table edges, ``supersample``² samples per pixel for the discs). ``scene`` is
    an optional cached ``_render_scene`` of the same window (the static part of the top view).
    """
    img = _render_scene(state, config, center, half_width) if scene is None else scene.copy()
    xs, ys = _edges(config, center, half_width)
    _composite_disc(img, xs, ys, state.agent, config.agent_radius, AGENT_COLOR, config.supersample)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def expert_action(state: DemoReachState, config: DemoReachConfig) -> np.ndarray:
    """Straight-line velocity to the target, norm-bounded by ``max_speed`` (float64, ``(action_dim,)``)."""
    delta = state.target_position - state.agent
    dist = float(np.linalg.norm(delta))
    step = delta if dist <= config.max_speed else delta * (config.max_speed / dist)
    out = np.zeros(config.action_dim, np.float64)
    out[:2] = step
    return out


class DemoReachEnv:
    """One episode at a time: ``reset(seed) -> obs``; ``step(action) -> (obs, reward, done, info)``."""

    def __init__(self, config: DemoReachConfig | None = None):
        self.config = config or DemoReachConfig()
        self._state: DemoReachState | None = None
        self._primary_scene: np.ndarray | None = None
        self._done = False
        self._success = False

    @property
    def state(self) -> DemoReachState:
        if self._state is None:
            raise RuntimeError("DemoReachEnv: call reset() first")
        return self._state

    @property
    def instruction(self) -> str:
        return instruction_for(self.state.target_color)

    def reset(self, seed: int | None = None, *, color: str | None = None) -> dict[str, Any]:
        """Start an episode; the world is a deterministic function of ``seed`` (and ``color`` if given)."""
        self._state = sample_state(np.random.default_rng(seed), self.config, color)
        # The top view's table and objects never move during an episode: render them once.
        self._primary_scene = _render_scene(self._state, self.config, np.zeros(2), self.config.primary_half_width)
        self._done = False
        self._success = False
        return self.observation()

    def observation(self) -> dict[str, Any]:
        s = self.state
        return {
            "primary_image": render_view(
                s, self.config, np.zeros(2), self.config.primary_half_width, scene=self._primary_scene
            ),
            "wrist_image": render_view(s, self.config, s.agent, self.config.wrist_half_width),
            "proprio": s.agent.astype(np.float32),
            "instruction": self.instruction,
        }

    def is_success(self) -> bool:
        s = self.state
        return bool(np.linalg.norm(s.agent - s.target_position) <= self.config.success_radius)

    def expert_action(self) -> np.ndarray:
        return expert_action(self.state, self.config)

    def step(self, action: np.ndarray | Sequence[float]) -> tuple[dict[str, Any], float, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("DemoReachEnv: the episode is over; call reset()")
        a = np.asarray(action, np.float64).reshape(-1)
        if a.shape[0] < 2 or not np.all(np.isfinite(a[:2])):
            raise ValueError(f"DemoReachEnv: action needs >= 2 finite entries, got {np.asarray(action)!r}")
        v = np.clip(a[:2], -self.config.max_speed, self.config.max_speed)
        s = self.state
        agent = np.clip(s.agent + v, -1.0, 1.0)
        self._state = dataclasses.replace(s, agent=agent, steps=s.steps + 1)
        self._success = self.is_success()
        self._done = self._success or self._state.steps >= self.config.max_steps
        info = {"success": self._success, "steps": self._state.steps}
        return self.observation(), float(self._success), self._done, info


class DemoReachVecEnv:
    """Several ``DemoReachEnv`` stepping together (batched closed-loop evaluation).

    Observations are stacked along a leading axis; an environment that is done keeps its last
    observation and ignores further actions until the next ``reset``.
    """

    def __init__(self, num_envs: int, config: DemoReachConfig | None = None):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.envs = [DemoReachEnv(config) for _ in range(num_envs)]
        self.done = np.zeros(num_envs, bool)
        self.success = np.zeros(num_envs, bool)
        self._last: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.envs)

    @staticmethod
    def _stack(obs: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {k: np.stack([o[k] for o in obs]) for k in ("primary_image", "wrist_image", "proprio")}
        out["instruction"] = [o["instruction"] for o in obs]
        return out

    def reset(self, seeds: Sequence[int], colors: Sequence[str | None] | None = None) -> dict[str, Any]:
        if len(seeds) != len(self.envs):
            raise ValueError(f"need {len(self.envs)} seeds, got {len(seeds)}")
        colors = colors if colors is not None else [None] * len(self.envs)
        self._last = [env.reset(int(s), color=c) for env, s, c in zip(self.envs, seeds, colors)]
        self.done[:] = False
        self.success[:] = False
        return self._stack(self._last)

    def step(self, actions: np.ndarray) -> tuple[dict[str, Any], np.ndarray, np.ndarray, list[dict[str, Any]]]:
        actions = np.asarray(actions)
        if actions.shape[0] != len(self.envs):
            raise ValueError(f"need actions for {len(self.envs)} envs, got shape {actions.shape}")
        rewards = np.zeros(len(self.envs), np.float32)
        infos = []
        for i, env in enumerate(self.envs):
            if self.done[i]:
                infos.append({"success": bool(self.success[i]), "steps": env.state.steps})
                continue
            self._last[i], rewards[i], self.done[i], info = env.step(actions[i])
            self.success[i] = info["success"]
            infos.append(info)
        return self._stack(self._last), rewards, self.done.copy(), infos
