"""One process of the two-process test (run as a script by test_multiprocess.py)."""

import json
import sys

import jax

jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_cpu_collectives_implementation", "gloo")

from configs import cosmos_policy  # noqa: E402
from cosmos_policy_jax.parallel import distributed, mesh, rules  # noqa: E402


def main() -> None:
    address, pid, shape = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    distributed.initialize(distributed.DistributedArgs(coordinator_address=address, num_processes=2, process_id=pid))
    cfg = cosmos_policy.get_config("tiny")
    cfg.parallel.data, cfg.parallel.fsdp, cfg.parallel.tensor = (int(x) for x in shape.split("x"))
    m = mesh.make_mesh(cfg.parallel)
    # Each process starts with its own name; process 0's must win everywhere.
    name = distributed.broadcast_string(f"job_from_process_{pid}")
    rank, size = rules.process_data_parallel_info(m)
    print(
        "RESULT "
        + json.dumps(
            {
                "pid": jax.process_index(),
                "process_count": jax.process_count(),
                "devices": jax.device_count(),
                "name": name,
                "mesh": dict(m.shape),
                "mesh_device_ids": [d.id for d in m.devices.ravel()],
                "dp": [rank, size],
            }
        ),
        flush=True,
    )
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
