"""Throughput of the one-shot estimator: candidates scored per minute on the default space (not a test).

Each estimate recalibrates BN on the calibration images of the train split and validates on the first
``eval_size`` validation images, as a search does. Timing does not depend on the weights, so without ``--run``
a freshly initialised supernet is used (its quantizer scales are initialised by the warm-up candidates, which
are not timed). Results go to ``experiments/results/<name>.{json,md}`` (``--name``, default ``bench_estimator``).

    PYTHONPATH=. .venv/bin/python experiments/bench_estimator.py --run RUN_DIR --threads 1 2 --processes 1 2

Every combination of torch threads per estimator and concurrent estimator processes is timed (each process in
its own spawned interpreter, all starting together after their warm-up): a search with parallel workers, or a
search next to another job, is several processes sharing the cores, and that is where the thread count of
each process matters most (OpenMP threads of oversubscribed processes wait for each other).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automq.oneshot.evaluate import ESTIMATOR_THREADS, OneShotEstimator
from automq.io import atomic_write_json, atomic_write_text
from automq.space.space import SearchSpace
from automq.model.supernet import Supernet
from automq.oneshot.train import load_space_data, load_supernet, training_summary, training_text

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_PER_MINUTE = 20.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="spaces/mbv2_fmnist.yaml")
    parser.add_argument("--run", help="a training run folder (default: an untrained supernet; timing is the same)")
    parser.add_argument("--data", help="dataset folder (default: the space's dataset.root)")
    parser.add_argument("--candidates", type=int, default=30, help="timed candidates per process (>= 1)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed candidates each process scores first")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads per estimator")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="concurrent estimator processes")
    parser.add_argument("--calib-images", type=int, help="default: the space's search.calib_size")
    parser.add_argument("--val-images", type=int, help="default: the space's search.eval_size")
    parser.add_argument("--calib-batch", type=int, default=256)
    parser.add_argument("--eval-batch", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="bench_estimator", help="output file stem, e.g. for a loaded machine")
    args = parser.parse_args(argv)
    if min(args.candidates, *args.threads, *args.processes) < 1 or args.warmup < 0:
        parser.error("--candidates, --threads and --processes must be at least 1, --warmup at least 0")
    return args


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}


def supernet_note(run: str | None) -> str:
    """Which supernet was timed: a run folder with its final validation accuracies, or an untrained one."""
    if run is None:
        return "untrained (timing does not depend on the weights)"
    return f"{run} ({training_text(training_summary(run))})"


def build_estimator(args: argparse.Namespace, threads: int) -> OneShotEstimator:
    space = SearchSpace.from_file(args.space)
    torch.manual_seed(args.seed)
    supernet = load_supernet(args.run, space) if args.run else Supernet(space)
    return OneShotEstimator(space, supernet, load_space_data(space, root=args.data), threads=threads,
                            calib_images=args.calib_images, val_images=args.val_images,
                            batch_size=args.calib_batch, eval_batch_size=args.eval_batch)


def time_candidates(estimator: OneShotEstimator, rng: np.random.Generator, count: int) -> dict[str, Any]:
    """Wall and CPU seconds of each of ``count`` fresh (uncached) estimates."""
    wall, cpu = [], []
    for _ in range(count):
        candidate = estimator.space.sample(rng)
        start, start_cpu = time.perf_counter(), time.process_time()
        estimator(candidate)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"wall": wall, "cpu": cpu}


def worker(args: argparse.Namespace, threads: int, index: int, start: Any, results: Any) -> None:
    """One estimator process: warm up, wait for the others, time its own stream of candidates."""
    estimator = build_estimator(args, threads)
    rng = np.random.default_rng([args.seed, index])
    for _ in range(args.warmup):  # untimed: first-use quantizer initialisation, thread-pool start-up
        estimator(estimator.space.sample(rng))
    start.wait()
    results.put(time_candidates(estimator, rng, args.candidates))


def time_cell(args: argparse.Namespace, threads: int, processes: int) -> dict[str, Any]:
    """``processes`` concurrent estimators of ``threads`` torch threads each; throughput of them all."""
    context = mp.get_context("spawn")  # a fresh interpreter each: no OpenMP pool inherited through fork
    start, results = context.Barrier(processes + 1), context.Queue()
    workers = [context.Process(target=worker, args=(args, threads, i, start, results)) for i in range(processes)]
    for process in workers:
        process.start()
    start.wait()
    load, began = os.getloadavg()[0], time.perf_counter()
    timings = [results.get() for _ in workers]
    elapsed = time.perf_counter() - began
    for process in workers:
        process.join()
    wall = [s for t in timings for s in t["wall"]]
    cpu = [s for t in timings for s in t["cpu"]]
    return {"threads": threads, "processes": processes, "load_average_1m": load,
            "load_average_1m_end": os.getloadavg()[0], "mean_s": statistics.mean(wall),
            "median_s": statistics.median(wall), "min_s": min(wall), "max_s": max(wall),
            "cpu_s": statistics.mean(cpu), "per_minute": 60.0 * len(wall) / elapsed}


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    reference = build_estimator(args, ESTIMATOR_THREADS)  # validates the inputs here, and sizes the report
    rows = []
    for processes in args.processes:
        for threads in args.threads:
            rows.append(time_cell(args, threads, processes))
            print(f"{processes} process(es) x {threads} thread(s): {rows[-1]['per_minute']:.1f} candidates/min",
                  flush=True)
    best = max(rows, key=lambda row: row["per_minute"])
    result = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine(),
        "space": args.space,
        "supernet": supernet_note(args.run),
        "calib_images": sum(len(y) for _, y in reference.calib),
        "val_images": sum(len(y) for _, y in reference.val),
        "calib_batch": args.calib_batch,
        "eval_batch": args.eval_batch,
        "candidates": args.candidates,
        "estimator_default_threads": ESTIMATOR_THREADS,
        "rows": rows,
        "candidates_per_minute": best["per_minute"],
        "best": {"threads": best["threads"], "processes": best["processes"]},
        "target_per_minute": TARGET_PER_MINUTE,
        "meets_target": best["per_minute"] >= TARGET_PER_MINUTE,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"{args.name}.json", result)
    atomic_write_text(args.out / f"{args.name}.md", report(result))
    print(report(result))
    return result


def report(result: dict) -> str:
    box, best = result["machine"], result["best"]
    verdict = "meets" if result["meets_target"] else "MISSES"
    return "\n".join([
        "# One-shot estimator throughput",
        "",
        f"`{result['command']}`",
        "",
        f"- space: `{result['space']}`, supernet: {result['supernet']}",
        f"- per candidate: BN recalibration on {result['calib_images']} train images (batch "
        f"{result['calib_batch']}), validation on {result['val_images']} val images (batch {result['eval_batch']})",
        f"- machine: {box['cpu']}, {box['usable_cpus']} usable CPUs, torch {box['torch']}; the load averages are "
        "those of the whole machine when the row started and ended (other jobs may share the cores)",
        "- each row runs that many estimator processes at once, each with that many torch threads; s/candidate "
        "is per estimate in one process, candidates/min counts all processes together",
        "",
        "| processes | torch threads each | load avg start / end | s/candidate (mean) | median | min | max | "
        "CPU s/candidate | candidates/min |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(f"| {r['processes']} | {r['threads']} | {r['load_average_1m']:.1f} / {r['load_average_1m_end']:.1f} | "
          f"{r['mean_s']:.3f} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} | {r['cpu_s']:.3f} | "
          f"{r['per_minute']:.1f} |" for r in result["rows"]),
        "",
        f"{result['candidates']} timed candidates per process. Target >= {result['target_per_minute']:g} "
        f"candidates/min on 2 cores: {verdict} it ({result['candidates_per_minute']:.1f}/min with "
        f"{best['processes']} process(es) of {best['threads']} thread(s)). The estimator runs on "
        f"{result['estimator_default_threads']} torch thread by default (`OneShotEstimator(threads=...)`).",
        "",
    ])


if __name__ == "__main__":
    main()
