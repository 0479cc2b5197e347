r"""Closed-loop evaluation of a Cosmos Policy checkpoint (or a baseline) in the demo task or in LIBERO.

    python -m cosmos_policy_jax.eval --config=configs/cosmos_policy.py:demo --checkpoint=JOB_DIR \
        [--episodes=100] [--seed=0] [--num_envs=8] [--policy=model|random|mean_action] \
        [--save_videos=4] [--output=DIR]

    python -m cosmos_policy_jax.eval --config=configs/cosmos_policy.py:libero --checkpoint=model.pt \
        --task_suite=libero_spatial [--task_ids=0,1] [--trials_per_task=50] --stats=STATS.json \
        [--t5=EMBEDDINGS.pkl] [--num_envs=1]

The environment follows the dataset kind of the config (``demo`` -> demo reach simulator,
``libero`` -> LIBERO). Prints one line per episode and a summary, and writes ``results.json``
(summary, per-task rates, every episode, timing, settings) and ``episodes.jsonl`` (appended as
episodes finish) to ``--output``. Exit status 0, or 2 with a one-line error for bad input.
Details: docs/evaluation.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from cosmos_policy_jax import cli
from cosmos_policy_jax.common.files import atomic_write_json
from cosmos_policy_jax.common.plain import to_plain
from cosmos_policy_jax.eval import preprocess
from cosmos_policy_jax.eval.errors import EvalInputError

POLICIES = ("model", "random", "mean_action", "server")


@dataclasses.dataclass
class EvalOptions:
    checkpoint: str = ""
    policy: str = "model"
    server: str = ""  # --policy=server: HOST:PORT of `python -m cosmos_policy_jax.serve` (openpi protocol)
    episodes: int = 50  # demo only
    seed: int = 0
    num_envs: int = 1
    save_videos: int = 0
    output: str = ""
    stats: str = ""
    t5: str = ""
    task_suite: str = ""
    task_ids: tuple[int, ...] = ()
    trials_per_task: int = 50
    max_steps: int | None = None  # override the environment's step limit (quick checks)
    num_open_loop_steps: int | None = None  # default: config.model.sampler.num_open_loop_steps
    num_steps: int | None = None  # denoising steps; default: config.model.sampler.num_steps
    use_ema: bool | None = None
    jpeg_quality: int | None = -1  # -1: the environment's default (LIBERO 95, demo as its dataset)
    center_crop: bool | None = None  # None: when the model was trained with crop augmentation
    flip: bool | None = None  # None: LIBERO yes, demo no
    env_processes: bool | None = None  # LIBERO: one process per environment (None: when num_envs > 1)
    planning: Any = None  # planning.config.PlanningConfig; None or plain: the ordinary policy query
    planning_checkpoint: str = ""
    save_rollouts: str = ""  # directory for rollout HDF5 files (reference all_episodes layout)

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise EvalInputError(f"--policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.policy == "model" and not self.checkpoint:
            raise EvalInputError("--checkpoint is required with --policy=model (or use --policy=random|mean_action)")
        if self.policy == "server" and not self.server:
            raise EvalInputError("--server=HOST:PORT is required with --policy=server")
        for name in ("episodes", "num_envs", "trials_per_task"):
            if int(getattr(self, name)) < 1:
                raise EvalInputError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.save_videos < 0:
            raise EvalInputError(f"--save_videos must be >= 0, got {self.save_videos}")
        for name in ("max_steps", "num_open_loop_steps", "num_steps"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise EvalInputError(f"--{name} must be >= 1, got {value}")


# ------------------------------------------------------------------------------------------------
# Building the pieces
# ------------------------------------------------------------------------------------------------


def _dataset_cfg(config: Any) -> Any:
    return config.dataloader_train.dataset


def _build_policy(config: Any, opts: EvalOptions) -> tuple[Any, dict[str, Any], Any, str]:
    """(policy, metadata for the report, instruction -> embedding, statistics source)."""
    from cosmos_policy_jax.eval import policies
    from cosmos_policy_jax.eval.loading import load_eval_statistics

    if opts.policy == "server":
        server = policies.ServerPolicy(opts.server, api_key=os.environ.get("COSMOS_POLICY_API_KEY"))
        return server, {"policy": "server", "server": opts.server, **server.report()}, server.embed, "server"
    if opts.policy == "model":
        from cosmos_policy_jax.policy.api import load_policy

        policy = load_policy(
            opts.checkpoint, config=config, stats=opts.stats or None, t5=opts.t5 or None, use_ema=opts.use_ema,
            num_steps=opts.num_steps, batch_size=opts.num_envs, seed=opts.seed,
        )  # fmt: skip
        meta = {**policy.info, "num_denoising_steps": policy.num_steps}
        if opts.planning is not None and not (opts.planning.plain and not opts.planning_checkpoint):
            from cosmos_policy_jax.planning.policy import planning_policy_from_model

            model = (policy.net_def, policy.net_state, policy.vae_def, policy.vae_state)
            planner, meta = planning_policy_from_model(
                config, model, meta, policy.stats, opts.planning, opts.planning_checkpoint, opts.use_ema
            )
            return planner, meta, policy.embed, policy.info["stats"]
        return policy, meta, policy.embed, policy.info["stats"]
    stats, stats_path = load_eval_statistics(_dataset_cfg(config), opts.stats)
    chunk = int(_dataset_cfg(config).chunk_size)
    # Baselines ignore the instruction: no embeddings file needed.
    no_text = lambda text: np.zeros((1, 1), np.float32)  # noqa: E731
    if opts.policy == "random":
        return policies.RandomPolicy(stats, chunk), {"policy": "random"}, no_text, stats_path
    return policies.MeanActionPolicy(stats, chunk), {"policy": "mean_action"}, no_text, stats_path


def _image_spec(config: Any, opts: EvalOptions, kind: str, demo_jpeg: bool) -> preprocess.ImagePreprocessing:
    ds = _dataset_cfg(config)
    default_jpeg = preprocess.DEFAULT_JPEG_QUALITY if (kind == "libero" or demo_jpeg) else None
    return preprocess.ImagePreprocessing(
        image_size=int(ds.final_image_size),
        flip=(kind == "libero") if opts.flip is None else bool(opts.flip),
        jpeg_quality=default_jpeg if opts.jpeg_quality == -1 else opts.jpeg_quality,
        center_crop=bool(ds.use_image_aug) if opts.center_crop is None else bool(opts.center_crop),
    )


def _demo_setup(config: Any, opts: EvalOptions):
    from cosmos_policy_jax.demo import dataset as demo_dataset
    from cosmos_policy_jax.demo import env as demo_env

    ds = _dataset_cfg(config)
    root = demo_dataset.demo_root(ds)
    sim = demo_env.sim_config_from_manifest(root, int(ds.final_image_size))
    if opts.max_steps is not None:
        sim = dataclasses.replace(sim, max_steps=int(opts.max_steps))
    jpeg = False
    manifest = os.path.join(root, demo_dataset.MANIFEST)
    if os.path.isfile(manifest):
        with open(manifest) as f:
            jpeg = bool(json.load(f).get("params", {}).get("jpeg", False))
    env = demo_env.DemoVecEnv(opts.num_envs, sim, int(ds.proprio_dim))
    episodes = demo_env.demo_episodes(opts.episodes, opts.seed)
    return env, episodes, {"env": "demo_reach", "sim": dataclasses.asdict(sim)}, jpeg


def _libero_setup(config: Any, opts: EvalOptions):
    from cosmos_policy_jax.eval import libero_env

    if not opts.task_suite:
        raise EvalInputError(f"--task_suite is required for LIBERO ({', '.join(libero_env.SUITE_MAX_STEPS)})")
    if opts.task_suite not in libero_env.SUITE_MAX_STEPS:
        raise EvalInputError(
            f"unknown --task_suite {opts.task_suite!r}; choose one of {', '.join(libero_env.SUITE_MAX_STEPS)}"
        )
    # The reference seeds the host RNGs with its --seed before building environments (set_seed_everywhere).
    random.seed(opts.seed)
    np.random.seed(opts.seed % 2**32)
    info = libero_env.suite_info(opts.task_suite)
    episodes = libero_env.libero_episodes(info, opts.task_ids, opts.trials_per_task)
    use_processes = opts.num_envs > 1 if opts.env_processes is None else opts.env_processes
    env_cls = libero_env.ProcessLiberoVecEnv if use_processes else libero_env.LiberoVecEnv
    env = env_cls(opts.num_envs, opts.task_suite, max_steps=opts.max_steps)
    meta = {
        "env": "libero",
        "task_suite": opts.task_suite,
        "max_steps": env.max_steps,
        "settle_steps": env.settle_steps,
        "resolution": env.resolution,
        "env_processes": use_processes,
    }
    return env, episodes, meta, False


def _default_output(config: Any, opts: EvalOptions) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{config.get('config_arg', 'eval').replace(',', '_')}-{opts.task_suite or 'demo'}-{opts.policy}-{stamp}"
    return os.path.join("outputs", "eval", name)


def _check_inputs(config: Any, opts: EvalOptions) -> str:
    """Everything that can be checked before loading anything; returns the (created) output directory."""
    from cosmos_policy_jax import config_lib

    config_lib.resolve(config)
    if opts.policy == "model":  # before anything is loaded: the VAE file, a checkpoint of other sizes/layout
        from cosmos_policy_jax.config_drift import check_checkpoint_matches

        vae = config.model.tokenizer.load_path
        if vae and not os.path.exists(vae):
            raise EvalInputError(f"model.tokenizer.load_path: not found: {vae}{config_lib.download_hint(vae)}")
        check_checkpoint_matches(opts.checkpoint, config)
        if opts.planning_checkpoint:  # the world model / value network queries the same latent layout
            check_checkpoint_matches(opts.planning_checkpoint, config, name="planning checkpoint")
    kind = _dataset_cfg(config).kind
    if kind not in ("demo", "libero"):
        raise EvalInputError(f"closed-loop evaluation supports the demo and libero configs, not dataset.kind={kind!r}")
    output = opts.output or _default_output(config, opts)
    try:  # before any work: an output that cannot be written is bad input, not a traceback at the end
        os.makedirs(output, exist_ok=True)
        if not os.access(output, os.W_OK | os.X_OK):
            raise PermissionError(13, "not writable")
    except OSError as e:
        raise EvalInputError(f"--output {output}: cannot write results there ({e.strerror or e})") from e
    return output


def _open_loop_steps(config: Any, opts: EvalOptions) -> tuple[int, int]:
    """(actions executed per chunk, chunk size)."""
    open_loop = int(opts.num_open_loop_steps or config.model.sampler.num_open_loop_steps)
    chunk = int(_dataset_cfg(config).chunk_size)
    if open_loop > chunk:
        raise EvalInputError(f"num_open_loop_steps={open_loop} exceeds the action chunk size {chunk}")
    return open_loop, chunk


def _episode_writer(output: str, opts: EvalOptions, env_meta: dict[str, Any], log) -> Callable[[Any], None]:
    """The ``on_episode`` hook: one ``episodes.jsonl`` row (the file starts empty), the rollout file, a log line."""
    jsonl = os.path.join(output, "episodes.jsonl")
    open(jsonl, "w").close()

    def on_episode(res: Any) -> None:
        row = {
            "index": res.spec.index,
            "task": res.spec.task,
            "task_id": res.spec.task_id,
            "trial": res.spec.trial,
            "seed": res.spec.seed,
            "instruction": res.instruction,
            "success": res.success,
            "length": res.length,
            "values": [round(v, 4) for v in res.values],
            "error": res.error,
        }
        with open(jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        if opts.save_rollouts:
            from cosmos_policy_jax.eval.rollout_writer import write_rollout

            write_rollout(opts.save_rollouts, res, suite=env_meta.get("task_suite") or env_meta["env"], tag=opts.policy)
            res.steps = None
        log(
            f"[eval] episode {res.spec.index}: {res.instruction!r} trial {res.spec.trial}: success={res.success} length={res.length}"
        )

    return on_episode


def _save_videos(results: list[Any], output: str) -> list[str]:
    from cosmos_policy_jax.eval import media

    videos = []
    for res in results:
        if res.frames:
            frames = media.side_by_side(res.frames)
            stem = os.path.join(
                output, "videos", f"ep{res.spec.index:04d}_{res.spec.task}_{'success' if res.success else 'failure'}"
            )
            videos.append(media.save_gif(frames, stem + ".gif"))
            videos.append(media.save_strip(frames, stem + ".png"))
    return videos


def _report(results: list[Any], timing: Any, settings: dict[str, Any], videos: list[str], output: str) -> dict:
    from cosmos_policy_jax.eval import rollout

    report = {
        "summary": rollout.summarize(results),
        "timing": timing.summary(settings["num_envs"]),
        "settings": settings,
        "episodes": [
            {
                "index": r.spec.index,
                "task": r.spec.task,
                "task_id": r.spec.task_id,
                "trial": r.spec.trial,
                "seed": r.spec.seed,
                "success": r.success,
                "length": r.length,
            }
            for r in results
        ],
        "videos": videos,
        "output": os.path.abspath(output),
    }
    return to_plain(report)


def _log_summary(report: dict[str, Any], output: str, log) -> None:
    s, t = report["summary"], report["timing"]
    if len(s["per_task"]) > 1:
        for name, row in s["per_task"].items():
            log(
                f"[eval]   task {row['task_id']} {name}: {row['successes']}/{row['episodes']} ({row['success_rate']:.3f})"
            )
    log(
        f"[eval] success rate {s['success_rate']:.3f} ({s['successes']}/{s['episodes']}), mean length "
        f"{s['mean_length']:.1f}; policy {t['policy_s_per_call']} s/call (first {t['policy_first_call_s']} s), "
        f"env {t['env_steps_per_s']} steps/s; results in {os.path.join(output, 'results.json')}"
    )


# ------------------------------------------------------------------------------------------------
# The evaluation
# ------------------------------------------------------------------------------------------------


def evaluate(config: Any, opts: EvalOptions, *, log=print) -> dict[str, Any]:
    """Run the whole evaluation described by ``config`` and ``opts``; returns (and writes) the report."""
    from cosmos_policy_jax.eval import rollout

    output = _check_inputs(config, opts)
    kind = _dataset_cfg(config).kind
    policy, policy_meta, embed, stats_path = _build_policy(config, opts)
    env, episodes, env_meta, demo_jpeg = (_demo_setup if kind == "demo" else _libero_setup)(config, opts)
    try:
        spec = _image_spec(config, opts, kind, demo_jpeg)
        open_loop, chunk = _open_loop_steps(config, opts)
        log(
            f"[eval] {len(episodes)} episodes on {env_meta['env']} with {opts.num_envs} env(s), policy={opts.policy}, "
            f"open loop {open_loop}/{chunk}, images {spec}"
        )
        results, timing = rollout.run_episodes(
            env,
            policy,
            episodes,
            num_open_loop_steps=open_loop,
            embed=embed,
            image_spec=spec,
            record=lambda s: s.index < opts.save_videos,
            on_episode=_episode_writer(output, opts, env_meta, log),
            seed=opts.seed,
            keep_steps=lambda s: bool(opts.save_rollouts),
        )
    finally:
        env.close()
    settings = {
        "config": config.get("config_arg", ""),
        "checkpoint": opts.checkpoint,
        "stats": stats_path,
        "seed": opts.seed,
        "num_envs": opts.num_envs,
        "num_open_loop_steps": open_loop,
        "chunk_size": chunk,
        "image_preprocessing": dataclasses.asdict(spec),
        **env_meta,
        **policy_meta,
    }
    report = _report(results, timing, settings, _save_videos(results, output), output)
    atomic_write_json(os.path.join(output, "results.json"), report, indent=2)
    _log_summary(report, output, log)
    return report


# ------------------------------------------------------------------------------------------------
# Command line (absl, like train.py)
# ------------------------------------------------------------------------------------------------


def _define_flags():
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "Config file and arg, e.g. configs/cosmos_policy.py:demo", lock_config=True
    )
    flags.DEFINE_string("checkpoint", "", "Job dir, orbax checkpoint dir, export .safetensors or reference .pt")
    flags.DEFINE_enum("policy", "model", list(POLICIES), "The trained model, a baseline, or a policy server")
    flags.DEFINE_string("server", "", "--policy=server: HOST:PORT of a running `python -m cosmos_policy_jax.serve`")
    flags.DEFINE_integer("episodes", 50, "Demo: number of episodes (cycling through the target colours)")
    flags.DEFINE_integer("seed", 0, "Episode seed stream (demo), host RNG seed (LIBERO) and policy sampling seed")
    flags.DEFINE_integer("num_envs", 1, "Environments stepping together (one batched policy call for all)")
    flags.DEFINE_integer("save_videos", 0, "Save the first K episodes as GIF + PNG strip")
    flags.DEFINE_string("output", "", "Output directory (default outputs/eval/<config>-<suite>-<policy>-<time>)")
    flags.DEFINE_string("stats", "", "dataset_statistics.json (default: the config's data_dir)")
    flags.DEFINE_string("t5", "", "T5 embeddings file (default: the config's t5_text_embeddings_path)")
    flags.DEFINE_string("task_suite", "", "LIBERO suite: libero_spatial | libero_object | libero_goal | libero_10")
    flags.DEFINE_list("task_ids", [], "LIBERO task ids (default: all tasks of the suite)")
    flags.DEFINE_integer("trials_per_task", 50, "LIBERO trials (init states) per task")
    flags.DEFINE_integer("max_steps", None, "Override the episode step limit (quick checks)")
    flags.DEFINE_integer("num_open_loop_steps", None, "Actions executed per chunk (default: config.model.sampler)")
    flags.DEFINE_integer("num_steps", None, "Denoising steps (default: config.model.sampler.num_steps)")
    flags.DEFINE_enum("use_ema", "auto", ["auto", "true", "false"], "Use EMA parameters (auto: when present)")
    flags.DEFINE_integer("jpeg_quality", -1, "Test-time JPEG quality; -1 env default, 0 off")
    flags.DEFINE_enum(
        "center_crop", "auto", ["auto", "true", "false"], "Test-time 90% centre crop (auto: if trained with crop aug)"
    )
    flags.DEFINE_enum("flip", "auto", ["auto", "true", "false"], "Vertical flip of camera images (auto: LIBERO)")
    flags.DEFINE_enum(
        "env_processes", "auto", ["auto", "true", "false"], "LIBERO: one process per env (auto: when num_envs > 1)"
    )
    flags.DEFINE_string("save_rollouts", "", "Write every episode as a rollout HDF5 file (all_episodes layout) here")
    from cosmos_policy_jax.planning import flags as planning_flags

    planning_flags.define_flags()  # best-of-N planning, the reference's flag names (docs/planning.md)
    flags.DEFINE_string(
        "compilation_cache",
        cli.default_compilation_cache(),
        "Persistent XLA compilation cache directory, shared with training ('' to disable)",
    )


def _options(f: Any) -> EvalOptions:
    """The options of the parsed flags (``EvalOptions`` checks them)."""
    from cosmos_policy_jax.planning import flags as planning_flags

    return EvalOptions(
        checkpoint=f.checkpoint,
        policy=f.policy,
        server=f.server,
        episodes=f.episodes,
        seed=f.seed,
        num_envs=f.num_envs,
        save_videos=f.save_videos,
        output=f.output,
        stats=f.stats,
        t5=f.t5,
        task_suite=f.task_suite,
        task_ids=tuple(int(t) for t in f.task_ids),
        trials_per_task=f.trials_per_task,
        max_steps=f.max_steps,
        num_open_loop_steps=f.num_open_loop_steps,
        num_steps=f.num_steps,
        use_ema=cli.tri_state(f.use_ema),
        jpeg_quality=None if f.jpeg_quality == 0 else f.jpeg_quality,
        center_crop=cli.tri_state(f.center_crop),
        flip=cli.tri_state(f.flip),
        env_processes=cli.tri_state(f.env_processes),
        planning=planning_flags.config_from_flags(f, f.num_steps or f.config.model.sampler.num_steps),
        planning_checkpoint=f.planning_checkpoint,
        save_rollouts=f.save_rollouts,
    )


def main(argv: list[str]) -> int:
    from absl import flags

    f = flags.FLAGS
    cli.reject_positional(argv)
    if f.config is None:
        cli.fail("--config is required, e.g. --config=configs/cosmos_policy.py:demo")
    cli.quiet_logging()  # orbax/jax INFO lines would bury the episode lines
    # Compiling the model (and the random VAE init of the demo config) takes minutes on a CPU.
    cli.enable_compilation_cache(f.compilation_cache)
    try:
        evaluate(f.config, _options(f))
    except Exception as e:
        if not cli.is_bad_input(e, also=(ValueError,)):
            raise
        cli.print_error(cli.describe(e))
        return cli.EXIT_BAD_INPUT
    return cli.EXIT_OK


def run() -> None:
    # --help lists the flags of the main module (``eval/__main__.py``): list ours there.
    cli.run(main, define_flags=_define_flags, help_module=__name__)
