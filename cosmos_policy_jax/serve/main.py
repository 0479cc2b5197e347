r"""Serve a trained policy over the network.

    python -m cosmos_policy_jax.serve --checkpoint=JOB_DIR [--config=configs/cosmos_policy.py:demo] \
        [--protocol=openpi|act] [--host=127.0.0.1] [--port=8000] [--max_batch=8] [--batch_window_ms=5] \
        [--batch_max_wait_ms=20]

``--protocol=openpi``: openpi's websocket protocol (``openpi-client``); ``act``: NVIDIA's ``POST /act``
with json-numpy bodies. Binding anything but localhost needs an API key (``--api_key`` or
``COSMOS_POLICY_API_KEY``). SIGTERM/SIGINT: stop accepting, finish requests in flight, exit 0. Bad
start-up input (checkpoint, config) exits 2 with one line. Details: docs/serving.md.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from cosmos_policy_jax import cli
from cosmos_policy_jax.eval.errors import EvalInputError
from cosmos_policy_jax.serve.service import LOCAL_HOSTS, PolicyService

API_KEY_ENV = "COSMOS_POLICY_API_KEY"


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "Config (default: the one saved with the checkpoint)", lock_config=True
    )
    flags.DEFINE_string("checkpoint", "", "Job dir, checkpoint step dir, export .safetensors or reference .pt")
    flags.DEFINE_enum("protocol", "openpi", ["openpi", "act"], "openpi websocket, or NVIDIA's HTTP POST /act")
    flags.DEFINE_string("host", "127.0.0.1", "Bind address; anything but localhost requires an API key")
    flags.DEFINE_integer("port", 8000, "Port")
    flags.DEFINE_string("api_key", None, f"API key clients must send (default: ${API_KEY_ENV})")
    flags.DEFINE_integer("max_batch", 8, "Most requests per jitted call (also the compiled batch size)")
    flags.DEFINE_float(
        "batch_window_ms", 5.0, "A batch runs once no new request arrived for this long (each arrival re-opens it)"
    )
    flags.DEFINE_float(
        "batch_max_wait_ms", None, "Longest wait of a batch's first request for others (default 4 x batch_window_ms)"
    )
    flags.DEFINE_integer("max_request_mb", 32, "Largest accepted request")
    flags.DEFINE_integer("log_every", 100, "One console line (req/s, p50/p99, batch size) per N requests")
    flags.DEFINE_string("stats", "", "dataset_statistics.json (default: saved with the checkpoint)")
    flags.DEFINE_string("t5", "", "T5 embeddings file (default: saved with the checkpoint)")
    flags.DEFINE_string(
        "t5_model", "", "T5 encoder (transformers name or local dir; torch extra) for instructions the checkpoint "
        "lacks, each embedded once; '' = such requests are refused"
    )  # fmt: skip
    flags.DEFINE_integer("num_steps", None, "Denoising steps (default: config.model.sampler.num_steps)")
    flags.DEFINE_integer("seed", 0, "Default sampling seed of requests that send none")
    flags.DEFINE_enum("use_ema", "auto", ["auto", "true", "false"], "Use EMA parameters (auto: when present)")
    from cosmos_policy_jax.planning import flags as planning_flags

    planning_flags.define_flags()  # best-of-N planning, the reference's flag names (docs/planning.md)


def build_service(opts: Any, config: Any, log=print) -> PolicyService:
    from cosmos_policy_jax.policy.api import load_policy

    policy = load_policy(
        opts.checkpoint,
        config=config,
        stats=opts.stats or None,
        t5=opts.t5 or None,
        t5_model=getattr(opts, "t5_model", ""),
        use_ema=cli.tri_state(opts.use_ema),
        num_steps=opts.num_steps,
        seed=opts.seed,
        batch_size=opts.max_batch,
    )
    run = None
    planning = _planning_config(opts, policy.num_steps)
    if planning is not None:
        from cosmos_policy_jax.planning.policy import planning_policy_from_model

        model = (policy.net_def, policy.net_state, policy.vae_def, policy.vae_state)
        use_ema = cli.tri_state(opts.use_ema)
        planner, _ = planning_policy_from_model(
            policy.config, model, {}, policy.stats, planning, opts.planning_checkpoint, use_ema
        )
        run = planner.run
        log(f"[serve] planning: {planning}")
    return PolicyService(
        policy, max_batch=opts.max_batch, window_s=opts.batch_window_ms / 1e3, log_every=opts.log_every, log=log,
        run=run, max_wait_s=_max_wait_ms(opts) / 1e3,
    )  # fmt: skip


def _max_wait_ms(opts: Any) -> float:
    """``--batch_max_wait_ms``, default 4 x ``--batch_window_ms`` (the batcher's rule)."""
    from cosmos_policy_jax.serve.batching import max_wait

    return max_wait(opts.batch_window_ms, getattr(opts, "batch_max_wait_ms", None))


def _planning_config(opts: Any, action_steps: int) -> Any:
    """The planning settings of the flags, or None for the plain policy query (no planning flag given)."""
    from cosmos_policy_jax.planning import flags as planning_flags

    if not hasattr(opts, "num_queries_best_of_n"):  # options built without the planning flags
        return None
    cfg = planning_flags.config_from_flags(opts, action_steps)
    return None if cfg.plain and not opts.planning_checkpoint else cfg


def make_server(service: PolicyService, opts: Any, api_key: str | None):
    if opts.protocol == "openpi":
        from cosmos_policy_jax.serve import openpi_ws as proto
    else:
        from cosmos_policy_jax.serve import act_http as proto
    return proto.make_server(service, opts.host, opts.port, api_key=api_key, max_bytes=opts.max_request_mb << 20)


def _check(opts: Any) -> str | None:
    if not opts.checkpoint:
        raise EvalInputError("--checkpoint is required")
    if opts.max_batch < 1 or opts.batch_window_ms < 0 or _max_wait_ms(opts) < 0 or opts.max_request_mb < 1:
        raise EvalInputError(
            "--max_batch and --max_request_mb must be >= 1, --batch_window_ms and --batch_max_wait_ms >= 0"
        )
    key = opts.api_key or os.environ.get(API_KEY_ENV) or None
    if opts.host not in LOCAL_HOSTS and not key:
        raise EvalInputError(f"--host={opts.host} is reachable from other machines: set --api_key or ${API_KEY_ENV}")
    return key


def serve(opts: Any, config: Any, log=print) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status."""
    key = _check(opts)
    service = build_service(opts, config, log)
    log("[serve] compiling the policy for the first request ...")
    service.batcher_run([service.policy.prepare(_example(service.policy))])  # compile before accepting clients
    try:
        server = make_server(service, opts, key)
    except OSError as e:
        raise EvalInputError(f"cannot listen on {opts.host}:{opts.port}: {e.strerror or e}") from e
    stopper: list[threading.Thread] = []

    def drain_and_shutdown() -> None:
        service.batcher.drain()  # new requests get "shutting down" (503); those submitted are answered
        server.shutdown()  # stops serve_forever and closes the listening socket (and websocket connections)

    def stop(signum, frame):
        if not stopper:
            log(f"[serve] signal {signum}: refusing new requests, finishing those in flight")
            stopper.append(threading.Thread(target=drain_and_shutdown, daemon=True))
            stopper[0].start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    m = service.metadata
    log(
        f"[serve] {opts.protocol} on {opts.host}:{opts.port}{' (API key required)' if key else ''}: layout "
        f"{m['layout']}, cameras {m['cameras']}, proprio {m['proprio_dim']}, chunk {m['chunk_size']}x"
        f"{m['action_dim']}, batch <= {opts.max_batch}, window {opts.batch_window_ms} ms (at most {_max_wait_ms(opts)} ms)"
    )
    print("[serve] ready", flush=True)
    try:
        server.serve_forever()
    finally:
        if stopper:
            stopper[0].join(120)
        service.close()
        if hasattr(server, "server_close"):
            server.server_close()
    log(f"[serve] stopped after {service.stats.total} requests")
    return 0


def _example(policy) -> dict:
    import numpy as np

    s = policy.image_size
    obs = {cam: np.zeros((s, s, 3), np.uint8) for cam in policy.cameras}
    obs["proprio"] = np.zeros(policy.proprio_dim, np.float32)
    obs["embedding"] = np.zeros(policy.text_shape, np.float32)
    return obs


def main(argv: list[str]) -> int:
    from absl import flags

    f = flags.FLAGS
    cli.reject_positional(argv)
    cli.quiet_logging()  # orbax/jax INFO lines would bury the [serve] lines and a start-up error
    try:
        return serve(f, f.config)
    except Exception as e:
        if not cli.is_bad_input(e, also=(ValueError,)):
            raise
        cli.print_error(cli.describe(e))
        return cli.EXIT_BAD_INPUT


def run() -> None:
    cli.run(main, define_flags=_define_flags)
