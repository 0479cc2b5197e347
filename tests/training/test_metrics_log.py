"""metrics.jsonl on resume: torn rows dropped with a warning, rows after the checkpoint and repeats cut,
TensorBoard told to purge the same steps; every row carries a wall-clock time."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from ml_collections import config_dict
from tensorboardX.proto import event_pb2

from cosmos_policy_jax.training import metrics as metrics_lib
from cosmos_policy_jax.training.callbacks import MetricsLogger


def _logger(job: Path) -> MetricsLogger:
    return MetricsLogger(config_dict.ConfigDict({"job": {"path_local": str(job)}, "trainer": {"use_wandb": False}}))


def _events(job: Path) -> list[event_pb2.Event]:
    """Every event of the TensorBoard files (TFRecord framing: length, crc, data, crc)."""
    out = []
    for path in sorted((job / "tensorboard").glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            out.append(event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length]))
            pos += 12 + length + 4
    return out


def test_resume_cuts_torn_later_and_repeated_rows(tmp_path, caplog):
    rows = [{"iteration": i, "loss": float(i)} for i in (1, 2, 1, 2, 3, 4)] + [{"iteration": 2, "split": "val"}]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"iteration": 5, "lo'  # torn by a crash
    (tmp_path / "metrics.jsonl").write_text(text)
    logger = _logger(tmp_path)
    logger.on_train_start(None, 3)
    assert [(r["iteration"], r.get("split")) for r in metrics_lib.read_metrics(str(tmp_path))] == [
        (1, None),
        (2, None),
        (3, None),
        (2, "val"),
    ]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "line 8 is not a JSON object" in messages and "repeat an iteration" in messages
    before = time.time()
    logger.on_step_end(None, 4, {"loss": 0.5, "lr": float("nan")})
    logger.on_train_end(None, 4)
    last = metrics_lib.read_metrics(str(tmp_path))[-1]
    assert last["iteration"] == 4 and last["lr"] is None and before - 1 <= last["time"] <= time.time() + 1
    assert "time" not in metrics_lib.deterministic_row(last)
    purges = [e.step for e in _events(tmp_path) if e.HasField("session_log") and e.session_log.status == 1]
    assert purges == [4]  # SessionLog.START at the first step after the checkpoint: TensorBoard drops later ones


def test_fresh_start_purges_nothing_and_keeps_a_clean_file(tmp_path):
    logger = _logger(tmp_path)
    logger.on_train_start(None, 0)
    logger.on_step_end(None, 1, {"loss": 1.0})
    logger.on_train_end(None, 1)
    content = (tmp_path / "metrics.jsonl").read_text()
    logger = _logger(tmp_path)
    logger.on_train_start(None, 1)  # resuming exactly where the file ends: nothing rewritten
    logger.on_train_end(None, 1)
    assert (tmp_path / "metrics.jsonl").read_text() == content
    purges = [e.step for e in _events(tmp_path) if e.HasField("session_log") and e.session_log.status == 1]
    assert purges == [2]  # only the resumed writer asks for a purge, from the step after the checkpoint


def test_read_metrics_skips_a_torn_last_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 1}\n{"iteration": 2}\n{"itera')
    assert [r["iteration"] for r in metrics_lib.read_metrics(str(tmp_path))] == [1, 2]
