"""Multi-process start-up. The only place that calls ``jax.distributed.initialize``."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import jax
from absl import logging

# Environment variables under which a cluster manager announces a multi-process job: all of a
# group must be set. When one group is and no explicit coordinator is given, jax's own cluster
# auto-detection is used; COSMOS_POLICY_NO_AUTODETECT=1 turns it off. SLURM counts only inside a
# launched step (srun sets SLURM_STEP_ID and SLURM_PROCID): a plain salloc/sbatch shell has only
# SLURM_JOB_ID and is a single process.
CLUSTER_ENV = {
    "SLURM": ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_PROCID"),
    "Open MPI": ("OMPI_COMM_WORLD_SIZE",),
    "Kubernetes JobSet": ("JOBSET_NAME",),
    "Cloud TPU": ("TPU_WORKER_HOSTNAMES",),
}
NO_AUTODETECT_ENV = "COSMOS_POLICY_NO_AUTODETECT"

# Timeouts (seconds) of jax.distributed, overridable from the environment. A process whose peer died
# (no heartbeat for HEARTBEAT seconds) is stopped by the coordination service instead of waiting forever
# in a collective; SHUTDOWN bounds the exit barrier; INIT bounds the wait for all processes to start.
TIMEOUT_ENV = {
    "initialization_timeout": "COSMOS_POLICY_INIT_TIMEOUT_S",
    "heartbeat_timeout_seconds": "COSMOS_POLICY_HEARTBEAT_TIMEOUT_S",
    "shutdown_timeout_seconds": "COSMOS_POLICY_SHUTDOWN_TIMEOUT_S",
}


@dataclass(frozen=True)
class DistributedArgs:
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None
    initialization_timeout: int = 300
    heartbeat_timeout_seconds: int = 100
    shutdown_timeout_seconds: int = 300


def _timeout_from_env(name: str, default: int) -> int:
    var = TIMEOUT_ENV[name]
    if var not in os.environ:
        return default
    try:
        value = int(os.environ[var])
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"distributed: {var}={os.environ[var]!r} must be a whole number of seconds >= 1")
    return value


def from_env(args: DistributedArgs) -> DistributedArgs:
    """Fill unset fields from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID; timeouts from
    the ``TIMEOUT_ENV`` variables when set."""
    env = os.environ
    return DistributedArgs(
        coordinator_address=args.coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None,
        num_processes=args.num_processes
        if args.num_processes is not None
        else (int(env["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in env else None),
        process_id=args.process_id
        if args.process_id is not None
        else (int(env["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in env else None),
        local_device_ids=args.local_device_ids,
        initialization_timeout=_timeout_from_env("initialization_timeout", args.initialization_timeout),
        heartbeat_timeout_seconds=_timeout_from_env("heartbeat_timeout_seconds", args.heartbeat_timeout_seconds),
        shutdown_timeout_seconds=_timeout_from_env("shutdown_timeout_seconds", args.shutdown_timeout_seconds),
    )


def _port_in_use(address: str) -> bool:
    _, _, port = address.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", int(port)))
        except OSError:
            return True
    return False


def detected_cluster(env: Mapping[str, str]) -> str | None:
    """The cluster manager whose multi-process launch ``env`` shows, or None (also when opted out)."""
    if env.get(NO_AUTODETECT_ENV) == "1":
        return None
    return next((name for name, keys in CLUSTER_ENV.items() if all(k in env for k in keys)), None)


def initialize(args: DistributedArgs) -> bool:
    """Start the multi-process runtime if the job is multi-process; return whether it did.

    Explicit flags or JAX_* variables win; otherwise a known cluster environment triggers jax's
    auto-detection (SLURM, Open MPI, Kubernetes JobSet); otherwise this is a single process.
    """
    args = from_env(args)
    explicit = args.coordinator_address is not None or (args.num_processes or 1) > 1
    if explicit:
        if args.coordinator_address is None or args.num_processes is None or args.process_id is None:
            raise ValueError(
                "distributed: --coordinator_address, --num_processes and --process_id must be given together"
            )
        if args.process_id == 0 and _port_in_use(args.coordinator_address):
            host, _, port = args.coordinator_address.rpartition(":")
            raise RuntimeError(
                f"distributed: coordinator port {port} on {host} is already in use; "
                f"pick another one, e.g. --coordinator_address={host}:{int(port) + 1}"
            )
        logging.info(
            "jax.distributed.initialize(coordinator=%s, num_processes=%d, process_id=%d)",
            args.coordinator_address,
            args.num_processes,
            args.process_id,
        )
        jax.distributed.initialize(
            coordinator_address=args.coordinator_address,
            num_processes=args.num_processes,
            process_id=args.process_id,
            local_device_ids=list(args.local_device_ids) if args.local_device_ids is not None else None,
            initialization_timeout=args.initialization_timeout,
            heartbeat_timeout_seconds=args.heartbeat_timeout_seconds,
            shutdown_timeout_seconds=args.shutdown_timeout_seconds,
        )
        return True
    cluster = detected_cluster(os.environ)
    if cluster is not None:
        logging.info("%s environment detected; jax.distributed.initialize() with auto-detection", cluster)
        jax.distributed.initialize(
            local_device_ids=list(args.local_device_ids) if args.local_device_ids else None,
            initialization_timeout=args.initialization_timeout,
            heartbeat_timeout_seconds=args.heartbeat_timeout_seconds,
            shutdown_timeout_seconds=args.shutdown_timeout_seconds,
        )
        return True
    return False


def broadcast_string(value: str) -> str:
    """Process 0's value of a string on every process (the reference broadcasts job.name)."""
    if jax.process_count() == 1:
        return value
    import numpy as np
    from jax.experimental import multihost_utils

    data = np.frombuffer(value.encode("utf-8"), dtype=np.uint8)
    length = multihost_utils.broadcast_one_to_all(np.int32(len(data)))
    buf = np.zeros((int(length),), np.uint8)
    if jax.process_index() == 0:
        buf[:] = data
    out = multihost_utils.broadcast_one_to_all(buf)
    return bytes(np.asarray(out, dtype=np.uint8)).decode("utf-8")
