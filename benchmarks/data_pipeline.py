"""Samples/s of the full LIBERO-format input pipeline (HDF5 read, resize, augmentation, batching).

    python benchmarks/data_pipeline.py                       # 224 px, stronger augmentation, 0/1/2 workers
    python benchmarks/data_pipeline.py --workers=0,4 --batches=40 --jpeg --json

The data is the demo task written in the LIBERO on-disk format at the production storage size
(256x256, like LIBERO-Cosmos-Policy; ``--jpeg`` stores JPEG frames), read by ``LiberoSource`` with
the ``libero`` config's dataset section (chunk 16, 7-D actions, 9-D proprio, T5-sized 512x1024
stand-in embeddings, stronger augmentation, 224 px output), through ``pipeline.build_pipeline``.
It is generated once into ``--data_dir`` (default: a cache directory) and reused.

For each worker count: build the pipeline, discard ``--warmup`` batches (worker start-up), then
time ``--batches`` batches. Prints samples/s per worker count and, with ``--json``, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# `configs/` is a top-level folder, not an installed package: make it importable when run as a script.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.cosmos_policy import get_config
from cosmos_policy_jax.data import pipeline
from cosmos_policy_jax.data.libero import LiberoSource
from cosmos_policy_jax.demo import dataset as demo_dataset
from cosmos_policy_jax.demo import generate


def prepare(data_dir: str, *, image_size: int, jpeg: bool, episodes: int, rollouts: int) -> str:
    """Generate the benchmark dataset unless it exists (keyed by its parameters)."""
    root = os.path.join(data_dir, f"bench_{image_size}px_{'jpeg' if jpeg else 'raw'}_{episodes}x{rollouts}")
    if not os.path.exists(os.path.join(root, generate.MANIFEST)):
        tmp = root + f".tmp-{os.getpid()}"
        generate.generate_demo_dataset(
            tmp,
            num_episodes=episodes,
            num_rollouts=rollouts,
            image_size=image_size,
            action_dim=7,
            proprio_dim=9,
            text_len=512,
            text_dim=1024,
            jpeg=jpeg,
        )
        os.rename(tmp, root)
    return root


def worker_rss_mb() -> list[float]:
    """Resident memory (MB) of this process's spawned data workers (Linux /proc; [] elsewhere)."""
    out = []
    for stat in os.listdir("/proc") if os.path.isdir("/proc") else []:
        try:
            with open(f"/proc/{stat}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != os.getpid():
                continue
            with open(f"/proc/{stat}/cmdline") as f:
                if "--multiprocessing-fork" not in f.read():
                    continue
            with open(f"/proc/{stat}/status") as f:
                rss = next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))
            out.append(rss / 1024)
        except (OSError, ValueError, StopIteration):
            continue
    return out


def time_workers(source, args) -> list[dict]:
    """For each of ``args.workers``: build the pipeline over ``source``, discard ``args.warmup`` batches
    (worker start-up), time ``args.batches`` batches; samples/s, warm-up seconds and workers' RSS."""
    results = []
    for workers in (int(w) for w in args.workers.split(",")):
        it = pipeline.build_pipeline(
            source,
            batch_size_per_process=args.batch_size,
            dp_rank=0,
            dp_size=1,
            shuffle=True,
            num_workers=workers,
            prefetch_buffer_size=args.prefetch,
        )
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            next(it)
        startup = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(args.batches):
            batch = next(it)
        elapsed = time.perf_counter() - t0
        rss = worker_rss_mb()
        it.close()
        rate = args.batches * args.batch_size / elapsed
        results.append({"workers": workers, "samples_per_s": rate, "warmup_s": startup, "worker_rss_mb": rss})
        print(
            f"workers={workers}: {rate:8.1f} samples/s  ({args.batches} batches of {args.batch_size}, "
            f"video {tuple(batch['video'].shape)}, warm-up {startup:.1f} s)"
            + (f", worker RSS {max(rss):.0f} MB" if rss else "")
        )
    return results


def pipeline_args(description: str) -> argparse.ArgumentParser:
    """The flags both pipeline benchmarks (HDF5 here, LeRobot in lerobot_pipeline.py) take."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--batches", type=int, default=20, help="timed batches per worker count")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--final_image_size", type=int, default=224)
    p.add_argument("--stored_image_size", type=int, default=256)
    p.add_argument("--no_aug", action="store_true", help="turn the image augmentation off")
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--rollouts", type=int, default=8)
    p.add_argument("--prefetch", type=int, default=2)
    p.add_argument(
        "--data_dir", default=os.path.join(os.path.expanduser("~"), ".cache", "cosmos_policy_jax", "bench_data")
    )
    p.add_argument("--json", action="store_true")
    return p


def main() -> None:
    p = pipeline_args(__doc__.splitlines()[0])
    p.add_argument("--jpeg", action="store_true", help="store frames as JPEG (decoded per sample)")
    args = p.parse_args()

    root = prepare(
        args.data_dir, image_size=args.stored_image_size, jpeg=args.jpeg, episodes=args.episodes, rollouts=args.rollouts
    )
    ds = get_config("libero").dataloader_train.dataset
    with ds.unlocked():
        ds.final_image_size = args.final_image_size
        ds.use_image_aug = not args.no_aug
    source = LiberoSource.from_config(demo_dataset.demo_dataset_config(ds, root), seed=0)

    results = time_workers(source, args)
    if args.json:
        # Imported here: `common` imports jax, which grain worker processes (re-importing this module) should not.
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import common

        print(
            json.dumps(
                {
                    "benchmark": "data_pipeline",
                    "final_image_size": args.final_image_size,
                    "stored_image_size": args.stored_image_size,
                    "augmentation": not args.no_aug,
                    "jpeg": args.jpeg,
                    "batch_size": args.batch_size,
                    "batches": args.batches,
                    "results": results,
                    **common.run_info(),
                }
            )
        )


if __name__ == "__main__":
    main()
