"""Two local processes with jax.distributed.initialize on 127.0.0.1 agree on job, mesh and ranks."""

import json
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two(shape: str) -> list[dict]:
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    procs = [
        subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "tests", "parallel", "mp_worker.py"), address, str(pid), shape],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in range(2)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]
        line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        assert line, out + err[-2000:]
        results.append(json.loads(line[0][len("RESULT ") :]))
    return sorted(results, key=lambda r: r["pid"])


@pytest.mark.parametrize(
    ("shape", "expected_dp"), [("4x1x1", [[0, 2], [1, 2]]), ("1x2x2", [[0, 2], [1, 2]]), ("1x1x4", [[0, 1], [0, 1]])]
)
def test_two_processes_agree(shape, expected_dp):
    r0, r1 = run_two(shape)
    assert r0["process_count"] == r1["process_count"] == 2
    assert r0["devices"] == r1["devices"] == 4
    assert r0["name"] == r1["name"] == "job_from_process_0"
    assert r0["mesh"] == r1["mesh"]
    assert r0["mesh_device_ids"] == r1["mesh_device_ids"]
    assert [r0["dp"], r1["dp"]] == expected_dp
