"""W&B: a restarted job continues the same run (the id is kept in the job directory)."""

import sys
import types

from configs import cosmos_policy
from cosmos_policy_jax.training.callbacks import MetricsLogger


def test_restart_resumes_the_same_wandb_run(tmp_path, monkeypatch):
    calls = []

    class _Run:
        def log(self, *a, **k):
            pass

        def finish(self):
            pass

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(kw) or _Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    ids = []
    for job in ("a", "a", "b"):
        c = cosmos_policy.get_config("tiny")
        c.job.path_local = str(tmp_path / job)
        c.trainer.use_wandb = True
        logger = MetricsLogger(c)
        logger.on_train_start(None, 0)
        logger.on_train_end(None, 0)
        ids.append(calls[-1]["id"])
        assert calls[-1]["resume"] == "allow"
    assert ids[0] == ids[1] and ids[0] != ids[2]
    assert (tmp_path / "a" / "wandb_run_id").read_text().strip() == ids[0]
