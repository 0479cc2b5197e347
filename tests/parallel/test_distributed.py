"""Cluster auto-detection: only a launched multi-process step starts jax.distributed."""

from cosmos_policy_jax.parallel import distributed


def test_slurm_needs_a_launched_step():
    assert distributed.detected_cluster({"SLURM_JOB_ID": "7"}) is None  # a plain salloc shell
    step = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_PROCID": "1"}
    assert distributed.detected_cluster(step) == "SLURM"
    assert distributed.detected_cluster({**step, "COSMOS_POLICY_NO_AUTODETECT": "1"}) is None
    assert distributed.detected_cluster({"OMPI_COMM_WORLD_SIZE": "2"}) == "Open MPI"
    assert distributed.detected_cluster({}) is None


def test_plain_salloc_shell_runs_as_one_process(monkeypatch):
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_STEP_ID", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert distributed.initialize(distributed.DistributedArgs()) is False
