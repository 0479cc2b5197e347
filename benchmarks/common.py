"""Shared pieces of the benchmark scripts: timing, peak FLOP/s, XLA analyses, run metadata, bench models.

Every script prints one JSON line with ``--json``; the fields built here (``run_info``) make a
figure reproducible: date, git commit, backend, device kind, XLA_FLAGS, load average.
"""

from __future__ import annotations

import datetime
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# `configs/` is a top-level folder, not an installed package: importable when a script runs from anywhere.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cosmos_policy_jax import xla_env  # noqa: E402
from cosmos_policy_jax.common.git import git_commit  # noqa: E402


def apply_project_xla_defaults() -> None:
    """What ``train``/``eval`` do before JAX starts (oneDNN on CPU unless COSMOS_POLICY_CPU_ONEDNN=0)."""
    xla_env.configure_process()


# ---------------------------------------------------------------------------------------------------
# Metadata


def load_avg() -> list[float] | None:
    """1, 5 and 15 minute load averages (benchmark figures are only comparable on a quiet machine)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run_info() -> dict[str, Any]:
    dev = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(ROOT, short=True),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "num_devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_avg": load_avg(),
    }


# ---------------------------------------------------------------------------------------------------
# Timing


def block(tree: Any) -> Any:
    return jax.block_until_ready(tree)


def time_calls(fn: Callable[[], Any], *, steps: int, warmup: int) -> list[float]:
    """Wall time of ``steps`` calls of ``fn`` after ``warmup`` untimed ones, each waited for."""
    for _ in range(warmup):
        block(fn())
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - t0)
    return times


def summary(times: list[float], prefix: str) -> dict[str, float]:
    return {
        f"{prefix}_median": round(statistics.median(times), 5),
        f"{prefix}_min": round(min(times), 5),
        f"{prefix}_max": round(max(times), 5),
    }


def compile_timed(jitted, *args) -> tuple[Any, float]:
    """(compiled executable, lower + compile seconds)."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------
# Peak FLOP/s and XLA analyses


def default_matmul_size() -> int:
    # Large enough to be compute-bound: 4096^3 on a 2-core CPU (~0.7 s), 8192^3 on accelerators.
    return 4096 if jax.default_backend() == "cpu" else 8192


def measure_matmul_peak(dtype: str = "float32", n: int | None = None, repeats: int = 5) -> float:
    """Achieved FLOP/s of one device on an (n x n) @ (n x n) matmul in ``dtype``: the MFU denominator."""
    n = n or default_matmul_size()
    dt = jnp.dtype(dtype)
    dev = jax.devices()[0]
    a = jax.device_put(jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dt), dev)
    b = jax.device_put(jnp.asarray(np.random.default_rng(1).standard_normal((n, n)), dt), dev)
    mm = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=dt))
    times = time_calls(lambda: mm(a, b), steps=repeats, warmup=1)
    return 2.0 * n**3 / statistics.median(times)


def xla_flops(compiled) -> float | None:
    """XLA's FLOP estimate of a compiled executable (while-loop bodies, e.g. scanned layers, count ONCE)."""
    try:
        ca = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(ca, list | tuple):
        ca = ca[0] if ca else None
    if not ca or "flops" not in ca:
        return None
    return float(ca["flops"])


def memory_analysis(compiled) -> dict[str, int] | None:
    """Per-device buffer sizes XLA assigned to the executable (bytes)."""
    try:
        m = compiled.memory_analysis()
    except Exception:
        return None
    if m is None:
        return None
    out = {}
    for key in (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "alias_size_in_bytes",
        "temp_size_in_bytes",
        "generated_code_size_in_bytes",
    ):
        if hasattr(m, key):
            out[key.removesuffix("_in_bytes")] = int(getattr(m, key))
    if out:
        # Donated/aliased outputs reuse argument buffers, so they are not counted twice.
        out["total_bytes"] = (
            out.get("argument_size", 0) + out.get("output_size", 0) - out.get("alias_size", 0) + out.get("temp_size", 0)
        )
    return out


def device_peak_memory() -> int | None:
    """Peak bytes in use on device 0 since start (GPU/TPU allocators report it; the CPU does not)."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:
        return None
    if not stats:
        return None
    return int(stats.get("peak_bytes_in_use", stats.get("bytes_in_use", 0))) or None


def gib(x: float | None) -> float | None:
    return None if x is None else round(x / 2**30, 3)


# ---------------------------------------------------------------------------------------------------
# Model set-up shared by the step benchmarks


@dataclass
class Bench:
    """A built model (``training.setup.ModelSetup``) with its train state, frozen VAE, DiT buffers and one
    global batch (arrays, or ShapeDtypeStructs for lower/compile only)."""

    model: Any
    state: Any
    vae: Any
    rest: Any
    batch: dict

    config = property(lambda self: self.model.config)
    mesh = property(lambda self: self.model.mesh)
    defs = property(lambda self: self.model.defs)
    tx = property(lambda self: self.model.tx)
    schedule = property(lambda self: self.model.schedule)

    @property
    def pcfg(self) -> Any:
        from cosmos_policy_jax.policy.config import PolicyConfig

        return PolicyConfig.from_config(self.config)

    @property
    def global_batch(self) -> int:
        return int(self.batch["video"].shape[0])


def apply_mesh_flag(config, mesh_flag: str | None) -> None:
    """``--mesh=data,fsdp,tensor`` (one entry may be -1) into ``config.parallel``."""
    if not mesh_flag:
        return
    sizes = [int(s) for s in mesh_flag.split(",")]
    if len(sizes) != 3:
        raise ValueError(f"--mesh takes data,fsdp,tensor (e.g. 1,-1,1), got {mesh_flag!r}")
    config.parallel.data, config.parallel.fsdp, config.parallel.tensor = sizes


def first_batch(config, mesh) -> dict:
    """One global batch from the config's own training pipeline (synthetic for ``bench``)."""
    from cosmos_policy_jax.training.data import DataFeed

    feed = DataFeed(config, "dataloader_train", mesh)
    try:
        return feed.next()[0]
    finally:
        feed.close()


def build_bench(config, mesh) -> Bench:
    """The trainer's model with a random step-0 state (no weight file read) and one real batch."""
    from cosmos_policy_jax.training import setup

    model = setup.build(config, mesh)
    return Bench(model, model.init_state(), model.vae_params(), model.dit_rest(), first_batch(config, mesh))


def jit_full_step(b: Bench):
    """The trainer's jitted micro-step (VAE encode, loss, backward, MultiSteps(clip, AdamW)), state donated."""
    return b.model.jit_step(b.batch)


def dit_batch(batch: dict) -> dict:
    """The batch without the video (the DiT-only step reads precomputed latents instead)."""
    return {k: v for k, v in batch.items() if k != "video"}


def make_vae_encode(b: Bench):
    """jit(vae params, batch) -> latent (B, 16, T', H/8, W/8), exactly the step's encode."""
    from flax import nnx

    from cosmos_policy_jax.policy.conditioning import encode_batch_video

    graphdef, pcfg = b.defs.vae_graphdef, b.pcfg

    def encode(vae_params, video):
        return encode_batch_video(nnx.merge(graphdef, vae_params), {"video": video}, pcfg)

    return jax.jit(encode)


def make_dit_step(b: Bench):
    """DiT step on precomputed latents: policy loss, backward and the optimizer update.

    ``(params, opt_state, latent, batch, rest, key) -> (params, opt_state, loss)``, params and optimizer
    state donated like the trainer's step.
    """
    import optax

    loss_fn = _dit_loss_fn(b)
    tx = b.tx

    def step(params, opt_state, latent, batch, rest, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, latent, batch, rest, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def make_dit_grad(b: Bench):
    """Forward + backward only: ``(params, latent, batch, rest, key) -> (loss, grads)``."""
    return jax.jit(jax.value_and_grad(_dit_loss_fn(b)))


def _dit_loss_fn(b: Bench):
    from flax import nnx

    from cosmos_policy_jax.policy.objective import policy_loss

    graphdef, pcfg = b.defs.dit_graphdef, b.pcfg

    def loss(params, latent, batch, rest, key):
        return policy_loss(nnx.merge(graphdef, params, rest), latent, batch, pcfg, key)[0]

    return loss


def make_dit_loss(b: Bench):
    """Forward only: the policy loss on precomputed latents."""
    return jax.jit(_dit_loss_fn(b))


def make_optimizer_update(b: Bench):
    """The optimizer alone: MultiSteps(clip, AdamW) update + apply on given gradients."""
    import optax

    tx = b.tx

    def update(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.jit(update, donate_argnums=(0, 1))


# ---------------------------------------------------------------------------------------------------
# Abstract set-up: compile without materialising anything (memory plans, FLOP checks)


def abstract_batch(config, mesh) -> dict:
    """ShapeDtypeStructs of one global training batch (shapes of the synthetic source = the readers')."""
    from cosmos_policy_jax.data.global_batch import host_model_batch
    from cosmos_policy_jax.data.synthetic import SyntheticSource
    from cosmos_policy_jax.parallel.rules import batch_sharding
    from cosmos_policy_jax.training.data import global_batch_size

    layout = {k: int(v) for k, v in config.model.latent_layout.items()}
    src = SyntheticSource.from_config(
        config.dataloader_train.dataset, layout=layout, state_t=int(config.model.state_t), length=1
    )
    one = host_model_batch({k: np.asarray(v)[None] for k, v in src.get(0).items()})
    gb = global_batch_size(config.dataloader_train, mesh)
    return {
        k: jax.ShapeDtypeStruct((gb, *v.shape[1:]), v.dtype, sharding=batch_sharding(mesh, v.ndim))
        for k, v in one.items()
    }


def abstract_bench(config, mesh) -> Bench:
    """A ``Bench`` whose state, VAE parameters, buffers and batch are ShapeDtypeStructs (lower/compile only)."""
    from cosmos_policy_jax.training import setup

    model = setup.build(config, mesh)
    abstract = model.abstract()
    return Bench(model, abstract.state, abstract.vae, abstract.rest, abstract_batch(config, mesh))


def abstract_latent(b: Bench) -> jax.ShapeDtypeStruct:
    """The VAE latent of the batch, abstractly (shape and the batch's sharding)."""
    enc = make_vae_encode(b)
    out = jax.eval_shape(enc, b.vae, b.batch["video"])
    return jax.ShapeDtypeStruct(out.shape, out.dtype, sharding=b.batch["video"].sharding)
