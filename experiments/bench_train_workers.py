"""Supernet training throughput: 2 Ray Train workers with 1 thread each vs one process with 2 torch threads (and 1).

Trains the same supernet (same space, seed, images and epochs) both ways and reads each epoch's training images
per second from the run's ``metrics.jsonl`` (training only: validation and Ray's start-up are excluded there; the
whole wall time, start-up included, is reported beside it). The two runs do not give the same weights (BN
normalises each worker's shard on its own; see :mod:`automq.oneshot.distributed`), so only speed is compared.
The one-process run with 1 thread separates the gain of two processes from that of avoiding two threads' per-op
synchronisation. Run it on an idle machine: the load average before and after each run is recorded.

    python experiments/bench_train_workers.py [--space spaces/mbv2_fmnist.yaml] [--subset 2048] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from automq.io import read_jsonl
from automq.oneshot.distributed import train_supernet_on_workers
from automq.oneshot.train import METRICS, RUN_INFO, train_supernet
from automq.space.space import SearchSpace


def measure(name: str, train: Callable[[Path], object], folder: Path, *, threads: int = 1) -> dict:
    """Run ``train(run_folder)`` with ``threads`` torch threads in this process and return its per-epoch images/s,
    wall time and the torch threads of the process that trained (a Ray worker's own setting for Ray runs)."""
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    start = time.perf_counter()
    train(folder / name)
    wall_s = time.perf_counter() - start
    epochs = list(read_jsonl(folder / name / METRICS))
    threads = json.loads((folder / name / RUN_INFO).read_text())["versions"]["torch_threads"]
    return {"images_per_s": [round(e["images_per_s"], 1) for e in epochs], "wall_s": round(wall_s, 1),
            "torch_threads_per_process": int(threads), "load_before": load_before, "load_after": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="spaces/mbv2_fmnist.yaml")
    parser.add_argument("--subset", type=int, default=2048, help="training images")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default="experiments/results")
    args = parser.parse_args()
    space = SearchSpace.from_file(args.space)
    options = {"epochs": args.epochs, "train_subset": args.subset}
    with tempfile.TemporaryDirectory(prefix="bench-train-workers-") as scratch:
        folder = Path(scratch)
        two = measure("two_workers", lambda out: train_supernet_on_workers(space, out, workers=2, **options), folder)
        one = measure("one_process", lambda out: train_supernet(space, out, progress=False, **options), folder,
                      threads=2)
        single = measure("one_thread", lambda out: train_supernet(space, out, progress=False, **options), folder)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch": torch.__version__},
        "space": args.space, "train_images": args.subset, "epochs": args.epochs,
        "batch_size": space.training.batch_size, "num_random": space.training.num_random,
        "ray_train_2_workers_1_thread": two, "one_process_2_threads": one, "one_process_1_thread": single,
        "speedup_last_epoch": round(two["images_per_s"][-1] / one["images_per_s"][-1], 3),
    }
    out = Path(args.out)
    (out / "bench_train_workers.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
