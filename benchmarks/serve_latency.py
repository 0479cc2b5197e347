r"""Policy-server latency and throughput: in-process vs the openpi websocket and the /act HTTP protocols.

    python benchmarks/serve_latency.py --json [--configs=demo,bench] [--clients=1,4,16] [--requests=10]

For each config: a random-weight export with its ``policy.json`` (statistics and one instruction's
embedding, so requests carry a string as real clients do) is written to a temporary directory and
loaded once with ``load_policy``. Then, per number of clients N (the policy's compiled batch size and
the server's ``--max_batch`` set to N, the server's default batching window unless
``--batch_window_ms``/``--batch_max_wait_ms`` say otherwise), N threads each send ``--requests`` requests one after the other (after one warm-up request each)
through

* ``inprocess``: ``PolicyService.infer`` (the batcher, no network),
* ``openpi``: the websocket server, with the real ``openpi-client``,
* ``act``: the HTTP server, with json-numpy bodies (``json_numpy`` when installed).

Before those, ``bare``: the jitted policy call alone on a prepared batch of N rows, for every N, the
sizes interleaved call by call (``--requests`` calls each after the compile; p50 per call, throughput
N / mean call time): what the compute itself allows.

With one client the protocols are interleaved request by request (round robin), so that a shared
machine's changing load hits them alike. The servers run in this process (threads), on 127.0.0.1.
Figures: p50/p99 latency per request and throughput (requests/s over the whole run). ``protocol_overhead_p50`` = protocol p50 / in-process p50
- 1 at one client; ``batching_speedup`` = throughput at the most clients / at one client (in-process,
and per protocol as ``batching_speedup_<protocol>``); ``compute_speedup_bound`` = bare throughput at
the largest batch / at batch 1: what batching can give at most on this machine, before any serving cost.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import numpy as np

INSTRUCTION = "pick up the object"


def make_export(config_arg: str, directory: str) -> str:
    """A random-weight export of ``config_arg`` with a self-contained policy.json; returns the .safetensors path."""
    from flax import nnx

    from configs.cosmos_policy import get_config
    from cosmos_policy_jax import config_lib
    from cosmos_policy_jax.common.files import sha256_of
    from cosmos_policy_jax.convert.dit import export_dit
    from cosmos_policy_jax.data import t5
    from cosmos_policy_jax.models.dit import DiTConfig, MinimalV1LVGDiT
    from cosmos_policy_jax.training.assets import FORMAT

    config = get_config(config_arg)
    ds = config.dataloader_train.dataset
    cfg = DiTConfig.from_config(config.model.net)
    path = os.path.join(directory, "net.safetensors")
    export_dit(nnx.state(MinimalV1LVGDiT(cfg, rngs=nnx.Rngs(0)), nnx.Param), cfg, path)
    emb = np.random.default_rng(0).normal(size=(1, int(ds.text_len), int(ds.text_dim))).astype(np.float32)
    t5.save_t5_embeddings({INSTRUCTION: emb}, os.path.join(directory, "t5_embeddings.pkl"))
    a, p = int(ds.action_dim), int(ds.proprio_dim)
    stats = {f"{g}_{n}": ([-1.0] * d if n == "min" else [1.0] * d if n in ("max", "std") else [0.0] * d)
             for g, d in (("actions", a), ("proprio", p)) for n in ("min", "max", "mean", "std", "median")}  # fmt: skip
    t5_file = os.path.join(directory, "t5_embeddings.pkl")
    manifest = {"format": FORMAT, "dataset_statistics": stats, "config": config_lib.to_plain_dict(config),
                "t5_embeddings": {"file": "t5_embeddings.pkl", "sha256": sha256_of(t5_file)}}  # fmt: skip
    with open(os.path.join(directory, "policy.json"), "w") as f:
        json.dump(manifest, f)
    return path


def _observation(policy, rng) -> dict:
    s = policy.image_size
    obs = {cam: rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for cam in policy.cameras}
    obs["proprio"] = rng.uniform(-1, 1, policy.proprio_dim).astype(np.float32)
    obs["instruction"] = INSTRUCTION
    return obs


def _client_factory(protocol: str, service, port: int):
    from cosmos_policy_jax.serve import wire

    if protocol == "inprocess":
        return lambda: service.infer
    if protocol == "openpi":
        from openpi_client.websocket_client_policy import WebsocketClientPolicy

        return lambda: WebsocketClientPolicy("127.0.0.1", port).infer

    def make():
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

        def call(obs):
            conn.request("POST", "/act", body=wire.json_dumps(obs), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise RuntimeError(body[:200])
            return wire.json_loads(body)

        return call

    return make


def run_case(service, protocol: str, clients: int, requests: int, port: int) -> dict:
    make = _client_factory(protocol, service, port)
    calls = [make() for _ in range(clients)]
    obs = [_observation(service.policy, np.random.default_rng(i)) for i in range(clients)]
    for call, o in zip(calls, obs):  # warm-up (and connection set-up)
        call(o)
    lat: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        barrier.wait()
        for _ in range(requests):
            t0 = time.perf_counter()
            calls[i](obs[i])
            with lock:
                lat.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    first_batch = len(service.stats.batches)
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    arr = np.asarray(lat)
    return {"protocol": protocol, "clients": clients, "requests": len(lat),
            "p50_ms": round(float(np.percentile(arr, 50)) * 1e3, 2), "p99_ms": round(float(np.percentile(arr, 99)) * 1e3, 2),
            "throughput_rps": round(len(lat) / wall, 3),
            "mean_batch": round(float(np.mean(service.stats.batches[first_batch:])), 2)}  # fmt: skip


def run_interleaved(service, protocols: list[str], requests: int, ports: dict[str, int]) -> list[dict]:
    """One client: request k of every protocol is sent back to back (round robin), then the next round."""
    calls = {p: _client_factory(p, service, ports[p])() for p in protocols}
    obs = _observation(service.policy, np.random.default_rng(0))
    for call in calls.values():
        call(obs)
    lat: dict[str, list[float]] = {p: [] for p in protocols}
    for _ in range(requests):
        for p in protocols:
            t0 = time.perf_counter()
            calls[p](obs)
            lat[p].append(time.perf_counter() - t0)
    return [{"protocol": p, "clients": 1, "requests": requests,
             "p50_ms": round(float(np.percentile(v, 50)) * 1e3, 2), "p99_ms": round(float(np.percentile(v, 99)) * 1e3, 2),
             "throughput_rps": round(len(v) / sum(v), 3), "mean_batch": 1.0} for p, v in lat.items()]  # fmt: skip


def time_bare(policy, batches: list[int], requests: int) -> list[dict]:
    """The compiled policy call alone on prepared batches of each size (inputs built once, results fetched).

    The sizes are interleaved call by call (round robin), so that a shared machine's changing load hits
    them alike: their throughput ratio is the figure.
    """
    import jax

    fn = policy._fn(False)
    calls = {}
    for b in batches:
        rows = [policy.prepare(_observation(policy, np.random.default_rng(i))) for i in range(b)]
        obs, emb, noise = policy._inputs(rows)
        calls[b] = lambda obs=obs, emb=emb, noise=noise: jax.device_get(
            fn(policy.net_state, policy.vae_state, obs, emb, policy._stats32, noise)
        )
        calls[b]()  # compile and warm up
    times: dict[int, list[float]] = {b: [] for b in batches}
    for _ in range(requests):
        for b, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[b].append(time.perf_counter() - t0)
    return [{"protocol": "bare", "clients": b, "requests": requests,
             "p50_ms": round(float(np.percentile(v, 50)) * 1e3, 2), "p99_ms": round(float(np.percentile(v, 99)) * 1e3, 2),
             "throughput_rps": round(b / float(np.mean(v)), 3), "mean_batch": float(b)} for b, v in times.items()]  # fmt: skip


def bench_config(
    config_arg: str, clients_list: list[int], requests: int, protocols: list[str], window_s: float, max_wait_s
) -> list[dict]:
    from cosmos_policy_jax.policy.api import load_policy
    from cosmos_policy_jax.serve import act_http, openpi_ws
    from cosmos_policy_jax.serve.service import PolicyService

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.redirect_stdout(sys.stderr):  # start-up notes; stdout carries only the --json result
            policy = load_policy(make_export(config_arg, tmp))
        bare = time_bare(policy, clients_list, requests)
        for row in bare:
            row["config"] = config_arg
            row["load_avg"] = common.load_avg()
            print(json.dumps(row), file=sys.stderr, flush=True)
        rows += bare
        for clients in clients_list:
            policy.batch_size = clients  # compiled batch size = most requests per call
            service = PolicyService(
                policy, max_batch=clients, window_s=window_s, max_wait_s=max_wait_s, log_every=0, log=lambda s: None
            )
            service.policy.run([policy.prepare(_observation(policy, np.random.default_rng(0)))])  # compile
            servers, ports = {}, {}
            for protocol in protocols:
                ports[protocol] = common_port()
                if protocol != "inprocess":
                    proto = openpi_ws if protocol == "openpi" else act_http
                    servers[protocol] = proto.make_server(
                        service, "127.0.0.1", ports[protocol], api_key=None, max_bytes=256 << 20
                    )
                    threading.Thread(target=servers[protocol].serve_forever, daemon=True).start()
            try:
                if clients == 1:  # interleaved, so that every protocol sees the same machine load
                    new = run_interleaved(service, protocols, requests, ports)
                else:
                    new = [run_case(service, p, clients, requests, ports[p]) for p in protocols]
            finally:
                for server in servers.values():
                    server.shutdown()
            for row in new:
                row["config"] = config_arg
                row["load_avg"] = common.load_avg()
                print(json.dumps(row), file=sys.stderr, flush=True)
            rows += new
            service.close()
    return rows


def common_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summarize(rows: list[dict]) -> dict:
    out = {}
    for cfg in sorted({r["config"] for r in rows}):
        mine = [r for r in rows if r["config"] == cfg]
        base = {r["protocol"]: r for r in mine if r["clients"] == 1}
        most = {}  # protocol -> its row at the most clients (> 1)
        for r in sorted(mine, key=lambda r: r["clients"]):
            if r["clients"] > 1:
                most[r["protocol"]] = r
        summary: dict = {}
        for p in base:
            if p not in ("inprocess", "bare") and "inprocess" in base:
                overhead = base[p]["p50_ms"] / base["inprocess"]["p50_ms"] - 1
                summary[f"protocol_overhead_p50_{p}"] = round(overhead, 4)
        for p, r in most.items():
            if p in base:
                ratio = round(r["throughput_rps"] / base[p]["throughput_rps"], 2)
                summary["compute_speedup_bound" if p == "bare" else f"batching_speedup_{p}"] = ratio
                summary["batching_clients"] = r["clients"]
        if "batching_speedup_inprocess" in summary:
            summary["batching_speedup"] = summary["batching_speedup_inprocess"]
        out[cfg] = summary
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--configs", default="demo,bench")
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--requests", type=int, default=10, help="requests per client (after 1 warm-up)")
    p.add_argument("--protocols", default="inprocess,openpi,act")
    p.add_argument("--batch_window_ms", type=float, default=5.0, help="the server's default")
    p.add_argument("--batch_max_wait_ms", type=float, default=None, help="default 4 x --batch_window_ms (the server's)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    common.apply_project_xla_defaults()
    window_s = a.batch_window_ms / 1e3
    max_wait_s = None if a.batch_max_wait_ms is None else a.batch_max_wait_ms / 1e3
    rows = []
    clients = [int(c) for c in a.clients.split(",")]
    for cfg in a.configs.split(","):
        rows += bench_config(cfg, clients, a.requests, a.protocols.split(","), window_s, max_wait_s)
    result = {"run": common.run_info(), "rows": rows, "summary": summarize(rows)}
    if a.json:
        print(json.dumps(result))
    else:
        for r in rows:
            print(f"{r['config']:6s} {r['protocol']:9s} clients {r['clients']:3d}: p50 {r['p50_ms']:9.2f} ms  "
                  f"p99 {r['p99_ms']:9.2f} ms  {r['throughput_rps']:8.2f} req/s")  # fmt: skip
        print(json.dumps(result["summary"], indent=1))
    for cfg, summary in result["summary"].items():
        if "compute_speedup_bound" in summary:
            print(f"{cfg}: compute speedup bound (bare call, batch {summary['batching_clients']} / batch 1): "
                  f"{summary['compute_speedup_bound']}x", file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
