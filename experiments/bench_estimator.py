"""Throughput of the one-shot estimator: candidates scored per minute on the default space (not a test).

Each estimate recalibrates BN on the calibration images of the train split and validates on the first
``eval_size`` validation images, as a search does. Timing does not depend on the weights, so without ``--run``
a freshly initialised supernet is used (its quantizer scales are initialised by the warm-up candidates, which
are not timed). Results go to ``experiments/results/bench_estimator.{json,md}``.

    PYTHONPATH=. .venv/bin/python experiments/bench_estimator.py --run RUN_DIR --threads 1 2

Several thread counts are timed in one run, on the same estimator: on a shared machine, two threads can be
slower than one when other jobs hold the cores (OpenMP threads wait for each other), so both are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from automq.evaluate import OneShotEstimator
from automq.io import atomic_write_json, atomic_write_text, read_jsonl
from automq.space import SearchSpace
from automq.supernet import Supernet
from automq.train import METRICS, load_space_data, load_supernet

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_PER_MINUTE = 20.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="spaces/mbv2_fmnist.yaml")
    parser.add_argument("--run", help="a training run folder (default: an untrained supernet; timing is the same)")
    parser.add_argument("--data", help="dataset folder (default: the space's dataset.root)")
    parser.add_argument("--candidates", type=int, default=30, help="timed candidates per thread count (>= 1)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed candidates scored first")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch CPU thread counts to time")
    parser.add_argument("--calib-images", type=int, help="default: the space's search.calib_size")
    parser.add_argument("--val-images", type=int, help="default: the space's search.eval_size")
    parser.add_argument("--calib-batch", type=int, default=256)
    parser.add_argument("--eval-batch", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def machine() -> dict[str, object]:
    """What the numbers were measured on, including how busy the machine was."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}


def supernet_note(run: str | None) -> str:
    """Which supernet was timed: a run folder with its final validation accuracies, or an untrained one."""
    if run is None:
        return "untrained (timing does not depend on the weights)"
    last = list(read_jsonl(Path(run) / METRICS))[-1]
    return (f"{run}, trained {last['epoch']} epochs (val acc largest {last['val_acc_largest']:.3f}, "
            f"smallest {last['val_acc_smallest']:.3f})")


def time_candidates(estimator: OneShotEstimator, rng: np.random.Generator, count: int) -> dict[str, float]:
    """Wall and CPU seconds per estimate over ``count`` fresh (uncached) candidates."""
    wall, cpu = [], []
    for _ in range(count):
        candidate = estimator.space.sample(rng)
        start, start_cpu = time.perf_counter(), time.process_time()
        estimator(candidate)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"mean_s": statistics.mean(wall), "median_s": statistics.median(wall), "min_s": min(wall),
            "max_s": max(wall), "cpu_s": statistics.mean(cpu), "per_minute": 60.0 / statistics.mean(wall)}


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    space = SearchSpace.from_file(args.space)
    torch.manual_seed(args.seed)
    supernet = load_supernet(args.run, space) if args.run else Supernet(space)
    data = load_space_data(space, root=args.data)
    estimator = OneShotEstimator(space, supernet, data, calib_images=args.calib_images, val_images=args.val_images,
                                 batch_size=args.calib_batch, eval_batch_size=args.eval_batch)
    rng = np.random.default_rng(args.seed)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        load = os.getloadavg()[0]
        for _ in range(args.warmup):  # untimed: first-use quantizer initialisation, thread-pool start-up
            estimator(space.sample(rng))
        rows.append({"threads": threads, "load_average_1m": load, **time_candidates(estimator, rng, args.candidates)})
    best = max(rows, key=lambda row: row["per_minute"])
    result = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine(),
        "space": args.space,
        "supernet": supernet_note(args.run),
        "calib_images": sum(len(y) for _, y in estimator.calib),
        "val_images": sum(len(y) for _, y in estimator.val),
        "calib_batch": args.calib_batch,
        "eval_batch": args.eval_batch,
        "candidates": args.candidates,
        "rows": rows,
        "candidates_per_minute": best["per_minute"],
        "best_threads": best["threads"],
        "target_per_minute": TARGET_PER_MINUTE,
        "meets_target": best["per_minute"] >= TARGET_PER_MINUTE,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "bench_estimator.json", result)
    atomic_write_text(args.out / "bench_estimator.md", report(result))
    print(report(result))
    return result


def report(result: dict) -> str:
    box = result["machine"]
    verdict = "meets" if result["meets_target"] else "MISSES"
    return "\n".join([
        "# One-shot estimator throughput",
        "",
        f"`{result['command']}`",
        "",
        f"- space: `{result['space']}`, supernet: {result['supernet']}",
        f"- per candidate: BN recalibration on {result['calib_images']} train images (batch "
        f"{result['calib_batch']}), validation on {result['val_images']} val images (batch {result['eval_batch']})",
        f"- machine: {box['cpu']}, {box['usable_cpus']} usable CPUs, torch {box['torch']}; the load average is "
        "that of the whole machine when the row started (other jobs share the cores)",
        "",
        "| torch threads | load avg | s/candidate (mean) | median | min | max | CPU s/candidate | candidates/min |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(f"| {r['threads']} | {r['load_average_1m']:.1f} | {r['mean_s']:.3f} | {r['median_s']:.3f} | "
          f"{r['min_s']:.3f} | {r['max_s']:.3f} | {r['cpu_s']:.3f} | {r['per_minute']:.1f} |"
          for r in result["rows"]),
        "",
        f"{result['candidates']} timed candidates per row. Target >= {result['target_per_minute']:g} candidates/min "
        f"on 2 cores: {verdict} it ({result['candidates_per_minute']:.1f}/min with {result['best_threads']} "
        "thread(s)).",
        "",
    ])


if __name__ == "__main__":
    main()
