"""Best-of-N planning: N action queries, each scored by a predicted future state and its value.

For a batch of M observations the N queries of every observation run together: each stage (action,
future state, value, every search depth) is one batched generate call over the M x N queries times the
ensemble members, rows ordered (observation, query, branch, member). Query q uses seed ``seed + q`` at
every stage (ensemble member i: ``seed + q + i``), as the reference; a query's result depends only on its
own seed and inputs, never on the batch it ran in.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cosmos_policy_jax.planning import aggregation as agg
from cosmos_policy_jax.planning.config import PlanningConfig
from cosmos_policy_jax.planning.generate import CallSpec, decode_images, encode_observation, frame_value, generate
from cosmos_policy_jax.policy.config import PolicyConfig
from cosmos_policy_jax.policy.inference import decode_action_latent
from cosmos_policy_jax.policy.layout import CURRENT_STATE_SLOTS, FUTURE_STATE_SLOTS


@dataclasses.dataclass
class Models:
    """The networks a planner calls: the policy for action queries, the planning model (when given)
    for future-state and value queries, and the VAE."""

    policy: Any
    vae: Any
    planning: Any | None = None

    @property
    def world(self) -> Any:
        return self.policy if self.planning is None else self.planning


@dataclasses.dataclass
class PlanResult:
    """Outcome for M observations and N queries (normalised actions; ``unnormalize`` with the dataset stats)."""

    selected_query: np.ndarray  # (M,) int
    actions_normalized: np.ndarray  # (M, chunk, A) float32, the selected query's depth-1 chunk
    value: np.ndarray  # (M,) float64, the selected query's value after depth aggregation
    all_actions_normalized: np.ndarray  # (M, N, chunk, A)
    all_values: np.ndarray  # (M, N) float64
    values_by_depth: np.ndarray  # (M, N, K) float64 (K: 1 + branches over the deeper search levels)
    actions_by_depth: np.ndarray  # (M, N, K, chunk, A) float32
    future_images: dict[str, np.ndarray] | None = None  # slot -> (M, S, S, 3) uint8, selected query, depth 1
    all_future_images: dict[str, np.ndarray] | None = None  # slot -> (M, N, S, S, 3)
    latents: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # intermediate samples


def _rep(x: jax.Array | None, k: int) -> jax.Array | None:
    """Each row repeated k times in place (row r -> rows r*k ... r*k+k-1)."""
    return x if x is None or k == 1 else jnp.repeat(x, k, axis=0)


def state_ranges(cfg: PolicyConfig) -> tuple[list[int], list[int]]:
    """(current-state frames, future-state frames) that a deeper search level shifts: predicted -> current."""
    layout = cfg.layout
    cur = [layout.index(s) for s in CURRENT_STATE_SLOTS if layout.has(s)]
    fut = [layout.index(s) for s in FUTURE_STATE_SLOTS if layout.has(s)]
    if len(cur) != len(fut):
        raise ValueError(f"search depth > 1 needs matching current/future state slots, got frames {cur} and {fut}")
    return cur, fut


class _Planner:
    """One planning call: holds the batch-wide inputs while the stages run."""

    def __init__(self, models: Models, cfg: PolicyConfig, pcfg: PlanningConfig, proprio, emb):
        self.models, self.cfg, self.p = models, cfg, pcfg
        self.proprio, self.emb = proprio, emb  # per row of the (M x N) query batch

    def _call(self, net, latent, spec: CallSpec, seeds: list[int], steps: list[int]) -> jax.Array:
        """Generate for ``latent`` whose rows are (query, ...) in query-major order."""
        k = latent.shape[0] // self.emb.shape[0]
        return generate(
            net, latent, _rep(self.proprio, k), _rep(self.emb, k), self.cfg, spec, seeds, steps,
            variance_scale=self.p.use_variance_scale,
        )  # fmt: skip

    def action(self, latent: jax.Array, seeds: list[int]) -> jax.Array:
        n_c = self.cfg.layout.num_conditional_frames
        steps = [self.p.num_denoising_steps_action] * len(seeds)
        return self._call(self.models.policy, latent, CallSpec(n_c), seeds, steps)

    def future(self, actions: jax.Array, seeds: list[int]) -> jax.Array:
        """Future-state samples (rows x members): the action frame joins the conditioning."""
        n_f, k = self.p.future_members, self.p.num_denoising_steps_future_state
        steps = agg.ensemble_steps(k, n_f) if self.p.use_ensemble_future_state_predictions else [k]
        row_seeds = [s + i for s in seeds for i in range(n_f)]
        spec = CallSpec(self.cfg.layout.num_conditional_frames + 1)
        return self._call(self.models.world, _rep(actions, n_f), spec, row_seeds, steps * len(seeds))

    def values(self, source: jax.Array, seeds: list[int], n_src: int, spec: CallSpec) -> tuple[np.ndarray, jax.Array]:
        """Aggregated value per row from ``n_src`` source samples per row (V: future states, Q: the action)."""
        p = self.p
        if not p.use_ensemble_value_predictions:
            first = source[::n_src]  # the reference scores only the first future sample
            sample = self._call(self.models.world, first, spec, seeds, [p.num_denoising_steps_value] * len(seeds))
            return frame_value(sample).astype(np.float64), sample
        m = p.num_value_predictions_in_ensemble
        steps = agg.ensemble_steps(p.num_denoising_steps_value, m)
        row_seeds = [s + j for s in seeds for _ in range(n_src) for j in range(m)]
        sample = self._call(self.models.world, _rep(source, m), spec, row_seeds, steps * (len(row_seeds) // m))
        members = frame_value(sample).reshape(len(seeds), n_src * m).T
        return agg.aggregate_values(members, p.value_ensemble_aggregation_scheme).astype(np.float64), sample

    def value_spec(self) -> CallSpec:
        return CallSpec(
            self.cfg.layout.state_t - 1, mask_current_state_action=self.p.mask_current_state_action_for_value_prediction
        )


def plan(
    models: Models,
    cfg: PolicyConfig,
    pcfg: PlanningConfig,
    images: dict[str, Any],
    proprio: np.ndarray | None,
    embedding: np.ndarray,
    *,
    return_future_images: bool = False,
) -> PlanResult:
    """Best-of-N planning for M observations.

    Args:
      models: policy (+ planning) network and VAE.
      cfg: the policy model's settings (layout, sampler sigmas, sizes).
      pcfg: the planning settings (reference flag names).
      images: ``{current camera slot: (M, S, S, 3) uint8}``, already preprocessed.
      proprio: (M, P) normalised proprio (``bf16_proprio`` of the raw values), None without a proprio slot.
      embedding: (M, L, D) instruction embeddings.
      return_future_images: also decode the depth-1 future images of every query.
    """
    n = pcfg.num_queries_best_of_n
    emb = jnp.asarray(embedding, jnp.float32)
    m = emb.shape[0]
    obs_latent = encode_observation(models.vae, {k: jnp.asarray(v) for k, v in images.items()}, cfg)
    pro = None if proprio is None else jnp.asarray(proprio, jnp.float32)
    pl = _Planner(models, cfg, pcfg, _rep(pro, n), _rep(emb, n))
    seeds = [pcfg.seed + q for q in range(n)] * m
    clean = _rep(obs_latent, n)
    act = pl.action(clean, seeds)
    latents = {"action": act}
    actions_norm = [np.asarray(decode_action_latent(act, cfg.layout, cfg.chunk_size, cfg.action_dim))]
    fut = images_src = None
    n_f = pcfg.future_members
    if pcfg.ar_future_prediction:
        fut = latents["future"] = pl.future(act, seeds)
    if pcfg.ar_value_prediction:
        v, latents["value"] = pl.values(fut, seeds, n_f, pl.value_spec())
    elif pcfg.ar_qvalue_prediction:
        spec = CallSpec(cfg.layout.state_t - 1, mask_future_state=pcfg.mask_future_state_for_qvalue_prediction)
        v, latents["value"] = pl.values(act, seeds, 1, spec)
    else:
        v = frame_value(act).astype(np.float64)  # value read from the action sample itself
    values = [v[:, None]]
    if pcfg.search_depth > 1:
        more_actions, more_values = _deeper(pl, cfg, pcfg, fut, seeds, latents)
        actions_norm += more_actions
        values += more_values
    values_by_depth = np.concatenate(values, axis=1).reshape(m, n, -1)
    actions_by_depth = np.stack(actions_norm, axis=1).reshape(m, n, -1, cfg.chunk_size, cfg.action_dim)
    if pcfg.search_depth > 1:
        all_values = agg.aggregate_depth(values_by_depth, pcfg.search_depth_value_aggregation_scheme)
    else:
        all_values = values_by_depth[..., 0]
    selected = np.array([agg.select_query(list(all_values[i])) for i in range(m)])
    rows = np.arange(m)
    result = PlanResult(
        selected_query=selected,
        actions_normalized=actions_by_depth[rows, selected, 0],
        value=all_values[rows, selected],
        all_actions_normalized=actions_by_depth[:, :, 0],
        all_values=all_values,
        values_by_depth=values_by_depth,
        actions_by_depth=actions_by_depth,
        latents={k: np.asarray(x) for k, x in latents.items()},
    )
    if return_future_images and not pcfg.ar_qvalue_prediction:
        images_src = fut if pcfg.ar_future_prediction else act
        k = n_f if pcfg.ar_future_prediction else 1
        result.all_future_images = _future_images(models, cfg, pcfg, images_src, _rep(clean, k), k, m, n)
        result.future_images = {s: x[rows, selected] for s, x in result.all_future_images.items()}
    return result


def _deeper(pl: _Planner, cfg: PolicyConfig, pcfg: PlanningConfig, fut, seeds: list[int], latents: dict):
    """Search levels 2..D: the predicted future state becomes the current state of a new action query.

    As the reference: every future sample of the previous level starts a branch (action, future state,
    value); the values of all branches are appended in order, and the next level expands only the future
    samples of the last branch.
    """
    cur, nxt = state_ranges(cfg)
    n_f = pcfg.future_members
    prev, branches = fut, n_f
    actions, values = [], []
    q = len(seeds)
    for d in range(2, pcfg.search_depth + 1):
        r = prev.at[:, :, jnp.asarray(cur)].set(prev[:, :, jnp.asarray(nxt)])
        bseeds = [s for s in seeds for _ in range(branches)]
        act = pl.action(r, bseeds)
        a = np.asarray(decode_action_latent(act, cfg.layout, cfg.chunk_size, cfg.action_dim))
        actions += list(a.reshape(q, branches, *a.shape[1:]).transpose(1, 0, 2, 3))
        f = pl.future(act, bseeds)
        v, vs = pl.values(f, bseeds, n_f, pl.value_spec())
        values.append(v.reshape(q, branches))
        latents[f"depth{d}.action"], latents[f"depth{d}.future"], latents[f"depth{d}.value"] = act, f, vs
        # Next level: the future samples of each query's last branch.
        prev = f.reshape(q, branches * n_f, *f.shape[1:])[:, (branches - 1) * n_f :].reshape(q * n_f, *f.shape[1:])
        branches = n_f
    return actions, values


def _future_images(models, cfg, pcfg, samples, clean, k: int, m: int, n: int) -> dict[str, np.ndarray]:
    """Decoded future images per query (M, N, S, S, 3), ensemble members aggregated by the scheme."""
    decoded = {s: np.asarray(x) for s, x in decode_images(models.vae, samples, clean, cfg).items()}
    members = [{s: x[r * k + i] for s, x in decoded.items()} for r in range(m * n) for i in range(k)]
    out = []
    for r in range(m * n):
        group = members[r * k : (r + 1) * k]
        out.append(agg.aggregate_images(group, pcfg.future_state_ensemble_aggregation_scheme) if k > 1 else group[0])
    return {s: np.stack([o[s] for o in out]).reshape(m, n, *out[0][s].shape) for s in out[0]}


def bf16_proprio(proprio: np.ndarray, stats: dict[str, np.ndarray], *, round_bf16: bool = True) -> np.ndarray:
    """Normalised proprio as the reference injects it: float64 normalisation, then float32, then bfloat16.

    ``round_bf16=False`` keeps float32 (a float32-trained model saw unrounded proprio in training).
    """
    from cosmos_policy_jax.eval.preprocess import normalize_proprio

    p = normalize_proprio(np.asarray(proprio), stats).astype(np.float32)
    return np.asarray(jnp.asarray(p).astype(jnp.bfloat16).astype(jnp.float32)) if round_bf16 else p


def unnormalize(actions: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
    """Un-normalised float64 actions: 0.5 (a + 1) in float32, then times (max - min) + min in float64."""
    a = np.asarray(actions, np.float32)
    half = (np.float32(0.5) * (a + np.float32(1))).astype(np.float64)
    lo, hi = np.asarray(stats["actions_min"], np.float64), np.asarray(stats["actions_max"], np.float64)
    return half * (hi - lo) + lo
