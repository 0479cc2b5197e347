"""Samples/s of the input pipeline on LeRobot data (parquet + AV1 video decode, resize, augmentation, batching).

    COSMOS_POLICY_LEROBOT_PYTHON=/path/to/lerobot-venv/bin/python python benchmarks/lerobot_pipeline.py --json

The data is the benchmark dataset of ``benchmarks/data_pipeline.py`` (the demo task at 256x256,
16 demonstrations and 8 rollouts) written as LeRobot datasets by the real ``lerobot`` package (run
in-process when it imports, else under ``$COSMOS_POLICY_LEROBOT_PYTHON``: the v3.0 writer of lerobot
0.4.x, AV1 at lerobot's defaults), read by ``LeRobotSource`` with the ``libero`` config's dataset
section (chunk 16, stronger augmentation, 224 px output) through ``pipeline.build_pipeline``. Every
sample decodes 4 frames (2 cameras x current/future). Prints samples/s per worker count and, with
``--json``, one JSON line.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from data_pipeline import pipeline_args, prepare, time_workers

from configs.cosmos_policy import get_config
from cosmos_policy_jax.data.lerobot import LeRobotDataset, LeRobotSource
from cosmos_policy_jax.demo.lerobot_copy import demo_lerobot_config


def main() -> None:
    p = pipeline_args(__doc__.splitlines()[0])
    args = p.parse_args()

    root = prepare(
        args.data_dir, image_size=args.stored_image_size, jpeg=False, episodes=args.episodes, rollouts=args.rollouts
    )
    ds = get_config("libero").dataloader_train.dataset
    with ds.unlocked():
        ds.final_image_size = args.final_image_size
        ds.use_image_aug = not args.no_aug
    cfg = demo_lerobot_config(ds, root)
    version = LeRobotDataset(cfg["data_dir"]).version
    source = LeRobotSource.from_config(cfg, seed=0)

    results = time_workers(source, args)
    if args.json:
        import common

        print(
            json.dumps(
                {
                    "benchmark": "lerobot_pipeline",
                    "format": version,
                    "final_image_size": args.final_image_size,
                    "stored_image_size": args.stored_image_size,
                    "augmentation": not args.no_aug,
                    "batch_size": args.batch_size,
                    "batches": args.batches,
                    "results": results,
                    **common.run_info(),
                }
            )
        )


if __name__ == "__main__":
    main()
