"""The trained policy as one object: ``load_policy(path).infer(observation) -> {"actions": ...}``.

    from cosmos_policy_jax.policy.api import load_policy

    policy = load_policy("outputs/demo/job")                   # job dir, step dir, export or .pt
    print(policy.metadata["observation_spec"])
    out = policy.infer({"current_image": img, "proprio": p, "instruction": "reach the red target"})
    out["actions"]                                             # (chunk, action_dim), un-normalised

The same object serves ``python -m cosmos_policy_jax.eval`` (``__call__`` on a batch of preprocessed
observations), ``python -m cosmos_policy_jax.serve`` (``prepare`` each request, ``run`` a batch) and
user scripts. The weights are held once: the network and the VAE are split into graph definitions and
states, and one ``jax.jit`` program per batch size reads the states in place (``jit_policy_fn``).

Determinism: every row of a batch draws its own initial noise from its own seed
(``inference.batch_noise``) and every call runs at one compiled batch size (``batch_size``; shorter
batches are padded), so a result depends on the observation, the seed and ``batch_size`` only, never
on which other observations shared the call (measured bit-identical; XLA's CPU matmuls round
differently for different batch shapes, ~1e-8, hence the fixed size).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from cosmos_policy_jax.eval import preprocess
from cosmos_policy_jax.eval.errors import EvalInputError
from cosmos_policy_jax.eval.policies import PolicyInput, PolicyOutput
from cosmos_policy_jax.layouts import SLOTS

# Aliases accepted for openpi-style LIBERO clients (``observation/image`` ...).
KEY_ALIASES = {
    "observation/image": "current_image",
    "observation/wrist_image": "current_wrist_image",
    "observation/state": "proprio",
    "prompt": "instruction",
    "task_description": "instruction",
    "primary_image": "current_image",
    "wrist_image": "current_wrist_image",
    "left_wrist_image": "current_wrist_image",
    "right_wrist_image": "current_wrist_image2",
    "secondary_image": "current_image2",
}
MAX_IMAGE_SIDE = 4096


class ObservationError(ValueError):
    """An observation the policy cannot use; the message names the key and what is wrong."""


@dataclasses.dataclass
class Prepared:
    """One validated, preprocessed observation, ready to be stacked into a batch."""

    images: dict[str, np.ndarray]  # slot -> (S, S, 3) uint8
    proprio: np.ndarray  # (P,) float32, raw units
    embedding: np.ndarray  # (L, D) float32
    seed: int
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


def default_image_preprocessing(config: Any) -> preprocess.ImagePreprocessing:
    """Test-time image chain for ``config``'s data: JPEG 95 where training images were JPEG (LIBERO,
    RoboCasa, ALOHA; the demo as its manifest says), resize, centre crop if trained with crop augmentation.
    No flip: simulators that render upside down flip on the client side, as the reference's clients do."""
    ds = config.dataloader_train.dataset
    jpeg = ds.kind in ("libero", "robocasa", "aloha") or (ds.kind == "demo" and _demo_jpeg(ds))
    return preprocess.ImagePreprocessing(
        image_size=int(ds.final_image_size),
        flip=False,
        jpeg_quality=preprocess.DEFAULT_JPEG_QUALITY if jpeg else None,
        center_crop=bool(ds.use_image_aug),
    )


def _demo_jpeg(ds: Any) -> bool:
    import json
    import os

    from cosmos_policy_jax.demo import dataset as demo_dataset

    try:
        manifest = os.path.join(demo_dataset.demo_root(ds), demo_dataset.MANIFEST)
    except Exception:  # unset data root: the demo default (no JPEG)
        return False
    if not os.path.isfile(manifest):
        return False
    with open(manifest) as f:
        return bool(json.load(f).get("params", {}).get("jpeg", False))


class CosmosPolicy:
    """A loaded policy: weights, statistics, instruction embeddings and the test-time preprocessing.

    A query is ``prepare`` (validate + preprocess one observation into a ``Prepared`` row, whose
    ``options`` carry per-request switches such as ``return_future_images``) then ``run`` (rows ->
    results, one jitted call per ``batch_size`` rows); ``infer`` is both for one observation. New
    query kinds (e.g. planning) extend ``options`` and ``run``.
    """

    def __init__(
        self,
        config: Any,
        model: tuple[Any, Any, Any, Any],
        stats: Mapping[str, np.ndarray],
        *,
        embeddings: Mapping[str, np.ndarray] | None = None,
        text_encoder: Callable[[str], np.ndarray] | None = None,
        image_preprocessing: preprocess.ImagePreprocessing | None = None,
        num_steps: int | None = None,
        seed: int = 0,
        batch_size: int = 1,
        info: Mapping[str, Any] | None = None,
    ):
        from cosmos_policy_jax.policy.config import PolicyConfig
        from cosmos_policy_jax.policy.inference import STAT_KEYS

        self.config = config
        self.cfg = PolicyConfig.from_config(config)
        self.net_def, self.net_state, self.vae_def, self.vae_state = model
        self.stats = {k: np.asarray(v, np.float64) for k, v in stats.items()}
        self._stats32 = {k: np.asarray(self.stats[k], np.float32) for k in STAT_KEYS}
        self.embeddings = {k: np.asarray(v, np.float32) for k, v in (embeddings or {}).items()}
        self.text_encoder = text_encoder
        self.image_preprocessing = image_preprocessing or default_image_preprocessing(config)
        self.num_steps = int(num_steps or config.model.sampler.num_steps)
        self.seed = int(seed)
        if int(batch_size) < 1:
            raise EvalInputError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.info = dict(info or {})
        ds = config.dataloader_train.dataset
        self.image_size = int(ds.final_image_size)
        self.text_shape = (int(ds.text_len), int(ds.text_dim))
        self.proprio_dim, self.action_dim, self.chunk = int(ds.proprio_dim), int(ds.action_dim), int(ds.chunk_size)
        self.spatial = int(config.model.tokenizer.get("spatial_compression", 8))
        self._fns: dict[bool, Any] = {}
        self._embed_lock = threading.Lock()

    # -- description ---------------------------------------------------------------------------

    @property
    def cameras(self) -> list[str]:
        return list(self.cfg.layout.current_image_slots)

    @property
    def metadata(self) -> dict[str, Any]:
        """What a client needs to build observations and read results (JSON/msgpack-friendly)."""
        lay = self.cfg.layout
        spec: dict[str, Any] = {
            cam: {"shape": ["H", "W", 3], "dtype": "uint8", "note": f"any size, resized to {self.image_size}"}
            for cam in self.cameras
        }
        spec["proprio"] = {"shape": [self.proprio_dim], "dtype": "float32", "note": "raw (un-normalised) units"}
        spec["instruction"] = {"shape": [], "dtype": "str", "note": "or 'embedding'"}
        spec["embedding"] = {"shape": list(self.text_shape), "dtype": "float32", "optional": True}
        spec["seed"] = {"shape": [], "dtype": "int", "optional": True, "default": self.seed}
        return {
            "policy": "cosmos_policy_jax",
            "layout": _layout_name(self.config.model.latent_layout),
            "latent_layout": {s: lay.index(s) for s in SLOTS if lay.index(s) >= 0},
            "image_size": self.image_size,
            "cameras": self.cameras,
            "action_dim": self.action_dim,
            "proprio_dim": self.proprio_dim,
            "chunk_size": self.chunk,
            "num_open_loop_steps": int(self.config.model.sampler.num_open_loop_steps),
            "num_denoising_steps": self.num_steps,
            "image_preprocessing": dataclasses.asdict(self.image_preprocessing),
            "observation_spec": spec,
            "outputs": {
                "actions": {"shape": [self.chunk, self.action_dim], "dtype": "float32"},
                **({"value": {"shape": [], "dtype": "float32"}} if lay.has("value") else {}),
                **(
                    {"future_proprio": {"shape": [self.proprio_dim], "dtype": "float32"}}
                    if lay.has("future_proprio")
                    else {}
                ),
            },
            "instructions": sorted(self.embeddings),
            "weights": self.info.get("weights", ""),
        }

    # -- one observation -----------------------------------------------------------------------

    def embed(self, text: str) -> np.ndarray:
        """The (L, D) embedding of ``text``: the checkpoint's table, else the text encoder (cached)."""
        if text in self.embeddings:
            return self.embeddings[text]
        if self.text_encoder is None:
            raise ObservationError(
                f"no T5 embedding for instruction {text!r} in this checkpoint ({len(self.embeddings)} known "
                "instructions; send 'embedding', or install the torch extra for the T5 encoder)"
            )
        with self._embed_lock:
            emb = np.asarray(self.text_encoder(text), np.float32).reshape(self.text_shape)
            self.embeddings[text] = emb
        return emb

    def prepare(self, observation: Mapping[str, Any], *, preprocessed: bool = False) -> Prepared:
        """Validate and preprocess one observation; ``ObservationError`` names what is wrong."""
        if not isinstance(observation, Mapping):
            raise ObservationError(f"observation must be a dict, got {type(observation).__name__}")
        obs = {KEY_ALIASES.get(k, k): v for k, v in observation.items()}
        preprocessed = preprocessed or bool(obs.get("preprocessed", False))
        images = {cam: self._image(obs, cam, preprocessed) for cam in self.cameras}
        proprio = self._array(obs, "proprio", (self.proprio_dim,), np.float32)
        if "embedding" in obs:
            embedding = self._array(obs, "embedding", self.text_shape, np.float32)
        elif isinstance(obs.get("instruction"), str):
            embedding = self.embed(obs["instruction"])
        else:
            raise ObservationError("observation needs 'instruction' (a string) or 'embedding'")
        seed = obs.get("seed", self.seed)
        if isinstance(seed, np.ndarray) and seed.shape == ():
            seed = seed.item()
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= int(seed) < 2**32:
            raise ObservationError(f"'seed' must be an integer in [0, 2**32), got {seed!r}")
        options = {"return_future_images": bool(obs.get("return_future_images", False))}
        return Prepared(images, proprio, embedding, int(seed), options)

    def _array(self, obs: Mapping[str, Any], key: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        if key not in obs:
            raise ObservationError(f"observation has no {key!r}")
        try:
            x = np.asarray(obs[key], dtype=dtype)
        except (TypeError, ValueError) as e:
            raise ObservationError(f"{key!r} is not an array of numbers ({e})") from e
        if x.shape != shape:
            raise ObservationError(f"{key!r} has shape {x.shape}, expected {shape}")
        if not np.all(np.isfinite(x)):
            raise ObservationError(f"{key!r} has non-finite values (NaN or inf)")
        return x

    def _image(self, obs: Mapping[str, Any], cam: str, preprocessed: bool) -> np.ndarray:
        if cam not in obs:
            raise ObservationError(f"observation has no {cam!r} image (this policy's cameras: {self.cameras})")
        img = obs[cam]
        if not isinstance(img, np.ndarray):  # nested lists (JSON clients): integers in [0, 255]
            try:
                img = np.asarray(img)
            except (TypeError, ValueError) as e:
                raise ObservationError(f"{cam!r} is not an image array ({e})") from e
            if img.dtype.kind in "iu" and img.size and img.min() >= 0 and img.max() <= 255:
                img = img.astype(np.uint8)
        if img.dtype != np.uint8:
            raise ObservationError(f"{cam!r} must be uint8 (H, W, 3), got dtype {img.dtype}")
        if img.ndim != 3 or img.shape[-1] != 3 or min(img.shape[:2]) < 1 or max(img.shape[:2]) > MAX_IMAGE_SIDE:
            raise ObservationError(f"{cam!r} must be (H, W, 3) uint8 with sides <= {MAX_IMAGE_SIDE}, got {img.shape}")
        s = self.image_size
        if preprocessed:
            if img.shape != (s, s, 3):
                raise ObservationError(f"preprocessed {cam!r} must be ({s}, {s}, 3), got {img.shape}")
            return img
        return preprocess.preprocess_images(np.ascontiguousarray(img), self.image_preprocessing)

    # -- batches -------------------------------------------------------------------------------

    def _fn(self, future_images: bool):
        from cosmos_policy_jax.policy.inference import jit_policy_fn

        if future_images not in self._fns:
            self._fns[future_images] = jit_policy_fn(
                self.cfg, self.net_def, self.vae_def, num_steps=self.num_steps, return_future_images=future_images
            )
        return self._fns[future_images]

    def _inputs(self, rows: Sequence[Prepared]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        from cosmos_policy_jax.policy.inference import batch_noise

        obs = {cam: np.stack([r.images[cam] for r in rows]) for cam in self.cameras}
        obs["proprio"] = np.stack([r.proprio for r in rows])
        emb = np.stack([r.embedding for r in rows])
        side = self.image_size // self.spatial
        shape = (len(rows), self.cfg.state_ch, self.cfg.layout.state_t, side, side)
        return obs, emb, batch_noise(shape, [r.seed for r in rows], self.cfg.sampler_sigma_max)

    def run(self, rows: Sequence[Prepared]) -> list[dict[str, Any]]:
        """Prepared observations -> one result dict per row, ``batch_size`` rows per jitted call."""
        out: list[dict[str, Any]] = []
        for start in range(0, len(rows), self.batch_size):
            out += self._run_padded(rows[start : start + self.batch_size])
        return out

    def _run_padded(self, rows: Sequence[Prepared]) -> list[dict[str, Any]]:
        n = len(rows)
        padded = list(rows) + [rows[-1]] * (self.batch_size - n)
        future = any(r.options.get("return_future_images") for r in rows)
        obs, emb, noise = self._inputs(padded)
        out = jax.device_get(self._fn(future)(self.net_state, self.vae_state, obs, emb, self._stats32, noise))
        results = []
        for i, r in enumerate(rows):
            res: dict[str, Any] = {"actions": np.asarray(out["actions"][i])}
            for key in ("value", "future_proprio"):
                if key in out:
                    res[key] = np.asarray(out[key][i])
            if r.options.get("return_future_images") and "future_images" in out:
                res["future_images"] = {k: np.asarray(v[i]) for k, v in out["future_images"].items()}
            results.append(res)
        return results

    def infer(self, observation: Mapping[str, Any], *, seed: int | None = None) -> dict[str, Any]:
        """One observation (unbatched arrays) -> ``actions`` (chunk, action_dim) and ``value``, ``future_proprio``."""
        row = self.prepare(observation)
        if seed is not None:
            row.seed = int(seed)
        return self.run([row])[0]

    def __call__(self, batch: PolicyInput, *, seed: int) -> PolicyOutput:
        """The evaluation's call: M preprocessed observations, one seed."""
        rows = [
            Prepared({k: v[i] for k, v in batch.images.items()}, np.asarray(batch.proprio[i], np.float32),
                     np.asarray(batch.embedding[i], np.float32), int(seed))
            for i in range(batch.batch_size)
        ]  # fmt: skip
        out = self.run(rows)
        value = np.stack([o["value"] for o in out]).astype(np.float64) if "value" in out[0] else None
        return PolicyOutput(
            actions=np.stack([o["actions"] for o in out]).astype(np.float64),
            value=value,
            extras={"future_proprio": np.stack([o["future_proprio"] for o in out])}
            if "future_proprio" in out[0]
            else {},
        )

    def memory_analysis(self, batch: int = 1) -> dict[str, int]:
        """Compiled memory figures (bytes) of one query of ``batch`` observations."""
        return compiled_memory(
            self._fn(False), self.net_state, self.vae_state, abstract_inputs(self.config, batch, self._stats32)
        )


def abstract_inputs(config: Any, batch: int, stats: Mapping[str, np.ndarray] | None = None) -> tuple[Any, ...]:
    """ShapeDtypeStructs of (observation, embedding, stats, noise) for one query of ``batch`` observations."""
    from cosmos_policy_jax.policy.config import PolicyConfig
    from cosmos_policy_jax.policy.inference import STAT_KEYS

    cfg = PolicyConfig.from_config(config)
    ds = config.dataloader_train.dataset
    s, f = int(ds.final_image_size), int(config.model.tokenizer.get("spatial_compression", 8))
    sds = jax.ShapeDtypeStruct
    obs = {cam: sds((batch, s, s, 3), np.uint8) for cam in cfg.layout.current_image_slots}
    obs["proprio"] = sds((batch, int(ds.proprio_dim)), np.float32)
    dims = {"actions": int(ds.action_dim), "proprio": int(ds.proprio_dim)}
    st = {k: sds((dims[k.split("_")[0]],), np.float32) for k in STAT_KEYS} if stats is None else dict(stats)
    emb = sds((batch, int(ds.text_len), int(ds.text_dim)), np.float32)
    noise = sds((batch, cfg.state_ch, cfg.layout.state_t, s // f, s // f), np.float32)
    return obs, emb, st, noise


def compiled_memory(fn: Any, net_state: Any, vae_state: Any, inputs: tuple[Any, ...]) -> dict[str, int]:
    """XLA's memory analysis of ``fn`` (a ``jit_policy_fn``) compiled for these (possibly abstract) inputs."""
    t0 = time.perf_counter()
    compiled = fn.lower(net_state, vae_state, *inputs).compile()
    m = compiled.memory_analysis()
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes")
    out = {f: int(getattr(m, f, 0) or 0) for f in fields}
    out["peak_bytes"] = out["argument_size_in_bytes"] + out["output_size_in_bytes"] + out["temp_size_in_bytes"]
    out["peak_bytes"] -= out["alias_size_in_bytes"]
    out["compile_s"] = math.ceil(time.perf_counter() - t0)
    return out


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------


def _layout_name(latent_layout: Any) -> str:
    """The reference layout (libero / robocasa / aloha) that ``latent_layout`` is, else "custom"."""
    from cosmos_policy_jax.layouts import LAYOUTS, full_layout

    given = {k: int(v) for k, v in dict(latent_layout).items()}
    return next((name for name in LAYOUTS if full_layout(name) == given), "custom")


def _config_from(saved: dict | None, given: Any, path: str) -> Any:
    from ml_collections import config_dict

    from cosmos_policy_jax import config_lib
    from cosmos_policy_jax.eval.loading import check_config_agrees

    if given is None and saved is None:
        raise EvalInputError(f"{path}: the checkpoint carries no config; pass one (--config=...)")
    if given is None:
        config = config_dict.ConfigDict(saved)
    else:
        config = given
        if saved is not None:
            check_config_agrees(saved, config, path)
    config_lib.resolve(config)
    return config


def load_policy(
    path: str,
    *,
    config: Any = None,
    stats: str | Mapping[str, np.ndarray] | None = None,
    t5: str | None = None,
    use_ema: bool | None = None,
    num_steps: int | None = None,
    image_preprocessing: preprocess.ImagePreprocessing | None = None,
    text_encoder: Callable[[str], np.ndarray] | None = None,
    t5_model: str = "",
    seed: int = 0,
    batch_size: int = 1,
) -> CosmosPolicy:
    """The policy at ``path``: a training job dir, an orbax checkpoint root or step dir, an export
    (``export/net.safetensors`` with its ``policy.json``), or a reference ``.pt`` (then ``config``, ``stats``
    and ``t5`` are needed). ``config`` given with a self-contained checkpoint must agree with the saved one
    on action/proprio dims, chunk, layout and image size (one-line ``EvalInputError`` otherwise).
    ``t5_model``: a transformers T5 encoder (hub name or local directory; the ``torch`` extra) that embeds,
    once each, instructions the checkpoint's table lacks. ``batch_size``: the compiled batch size (see the
    module docstring)."""
    from cosmos_policy_jax.eval import loading

    assets = loading.load_checkpoint_assets(path)
    config = _config_from(assets.config, config, path)
    ds = config.dataloader_train.dataset
    if isinstance(stats, Mapping):
        stats_arrays, stats_source = dict(stats), "given"
    elif stats or assets.stats is None:
        stats_arrays, stats_source = loading.load_eval_statistics(ds, stats or "")
    else:
        stats_arrays, stats_source = assets.stats, f"{path} (saved with the checkpoint)"
    table_path = t5 or assets.t5_path or _existing(ds.t5_text_embeddings_path)
    table = loading.load_instruction_embeddings(table_path, int(ds.text_len), int(ds.text_dim)) if table_path else None
    if text_encoder is None and t5_model:
        from cosmos_policy_jax.data.t5 import t5_text_encoder

        text_encoder = t5_text_encoder(t5_model, max_length=int(ds.text_len), dim=int(ds.text_dim))
    if text_encoder is None and ds.kind == "demo":
        from cosmos_policy_jax.demo import text_stub

        # The demo's instructions were embedded with the deterministic stand-in encoder.
        def text_encoder(text: str) -> np.ndarray:
            return text_stub.encode_instruction(text, text_len=int(ds.text_len), text_dim=int(ds.text_dim))

    model, info = build_model(config, path, use_ema=use_ema)
    info.update(stats=stats_source, t5=table_path or "", config_source=assets.source or "given")
    return CosmosPolicy(
        config,
        model,
        stats_arrays,
        embeddings=table,
        text_encoder=text_encoder,
        image_preprocessing=image_preprocessing,
        num_steps=num_steps,
        seed=seed,
        batch_size=batch_size,
        info=info,
    )


def _existing(path: str) -> str:
    """The config's default embeddings file if it exists (a missing default is not an error: instructions
    then need an encoder or an ``embedding`` in the request)."""
    import os

    from cosmos_policy_jax.common.paths import expand_path

    expanded, missing = expand_path(path or "")
    return expanded if expanded and not missing and os.path.isfile(expanded) else ""


def build_model(config: Any, checkpoint: str, *, use_ema: bool | None = None) -> tuple[tuple[Any, ...], dict]:
    """((net graphdef, net state, vae graphdef, vae state), report) with the DiT weights at ``checkpoint``.

    One device (a 1 x 1 x 1 mesh): queries are small and the 2B model fits one accelerator. The VAE
    comes from ``model.tokenizer.load_path`` (the trainer's deterministic random init when empty).
    """
    import types

    from cosmos_policy_jax.parallel.mesh import make_mesh
    from cosmos_policy_jax.training import setup

    t0 = time.perf_counter()
    mesh = make_mesh(types.SimpleNamespace(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    model = setup.build(config, mesh)
    defs = model.defs
    loaded = model.load_params(checkpoint, use_ema=use_ema)
    vae_params = model.vae_params()
    rest = model.dit_rest()
    # The DiT graphdef splits into (params, rest); one state holding both keeps a single merge.
    from flax import nnx

    net = nnx.merge(defs.dit_graphdef, loaded.params, rest)
    net_def, net_state = nnx.split(net)
    info = {
        "policy": "model",
        "weights": loaded.source,
        "vae": config.model.tokenizer.load_path or "random init (model.tokenizer.load_path is empty)",
        "num_denoising_steps": int(config.model.sampler.num_steps),
        "device": str(jax.devices()[0]),
        "load_s": round(time.perf_counter() - t0, 2),
    }
    return (net_def, net_state, defs.vae_graphdef, vae_params), info
