"""How well the ``tune`` strategy scales with Ray workers, and what Ray costs per trial.

Runs the same search (random sampler, fixed seed, so every run evaluates the same candidates) with the one-shot
estimator of ``spaces/mbv2_fmnist.yaml`` at its default scale (``search.eval_size`` validation and
``search.calib_size`` calibration images) with 1 and 2 workers, and batches of 1 and of the default size.

* throughput: trials per minute between the first and the last finished trial (Ray's start-up excluded; it is
  reported separately as ``startup_s``, the time from the call to the first finished trial);
* Ray overhead per trial: ``workers * interval - evaluation time`` (median), i.e. the worker time per trial that
  is not spent inside the estimator, relative to the evaluation time.

Evaluation time does not depend on the weights, so without ``--supernet`` a freshly initialised supernet is
used. Run it on an idle machine: the load average is recorded with the results.

    python experiments/bench_tune_scaling.py [--supernet RUN_DIR] [--trials 48] [--out experiments/results]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from automq.oneshot.evaluate import OneShotEstimator
from automq.search.results import SearchLog
from automq.space.space import SearchSpace
from automq.strategies.tune import TuneStrategy
from automq.search.strategy import Budget
from automq.search.trial import Trial
from automq.model.supernet import Supernet
from automq.oneshot.train import load_space_data
from automq.io import atomic_write_json, atomic_write_text
from provenance import command, header, machine


class TimedLog(SearchLog):
    """A search log that remembers when each trial arrived at the driver."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: list[float] = []

    def append(self, trial: Trial) -> None:
        self.arrivals.append(time.perf_counter())
        super().append(trial)


def measure(space: SearchSpace, estimator: OneShotEstimator, *, workers: int, batch_size: int, trials: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as out:
        log = TimedLog(out, space, strategy="tune")
        start = time.perf_counter()
        TuneStrategy(sampler="random", workers=workers, batch_size=batch_size).run(space, estimator, Budget(trials),
                                                                               seed=0, log=log)
        total = time.perf_counter() - start
    evaluations = [t.wall_s for t in log.trials]
    interval = (log.arrivals[-1] - log.arrivals[0]) / (len(log.arrivals) - 1)
    eval_s = statistics.median(evaluations)  # the first call of each worker process includes warm-up
    overhead = workers * interval - eval_s
    return {"workers": workers, "batch_size": batch_size, "trials": len(log.trials), "total_s": total,
            "startup_s": log.arrivals[0] - start, "trials_per_min": 60.0 / interval, "eval_s": eval_s,
            "overhead_s": overhead, "overhead_rel": overhead / eval_s,
            "candidates": [t.candidate.id for t in log.trials]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="spaces/mbv2_fmnist.yaml")
    parser.add_argument("--supernet", help="a trained run folder (default: a freshly initialised supernet)")
    parser.add_argument("--trials", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=TuneStrategy().batch_size)
    parser.add_argument("--out", default="experiments/results")
    args = parser.parse_args()

    started = time.perf_counter()
    torch.set_num_threads(1)
    space = SearchSpace.from_file(args.space)
    if args.supernet:
        estimator = OneShotEstimator.from_run(args.supernet, space=space)
    else:
        torch.manual_seed(0)
        estimator = OneShotEstimator(space, Supernet(space), load_space_data(space))
    load_before = os.getloadavg()
    runs = [measure(space, estimator, workers=w, batch_size=b, trials=args.trials)
            for b in sorted({1, args.batch_size}) for w in (1, 2)]
    by = {(r["workers"], r["batch_size"]): r for r in runs}
    speedup = {b: by[(2, b)]["trials_per_min"] / by[(1, b)]["trials_per_min"] for b in sorted({1, args.batch_size})}
    result = {"command": command(), "machine": machine(), "space": args.space,
              "supernet": args.supernet or "freshly initialised (timing only)",
              "eval_size": space.search.eval_size, "calib_size": space.search.calib_size,
              "cpu_count": os.cpu_count(), "load_average_before": load_before,
              "load_average_after": os.getloadavg(), "runs": runs, "speedup_2_over_1": speedup,
              "wall_s": time.perf_counter() - started}
    out = Path(args.out)
    atomic_write_json(out / "bench_tune_scaling.json", result)
    atomic_write_text(out / "bench_tune_scaling.md", markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = [
        "# Ray Tune scaling of the `tune` strategy", "", *header(result), "",
        f"Space `{result['space']}`, one-shot estimator at the default scale ({result['eval_size']} validation and "
        f"{result['calib_size']} calibration images), supernet: {result['supernet']}; {result['cpu_count']} CPU "
        f"cores; load average before/after: {', '.join(f'{x:.2f}' for x in result['load_average_before'])} / "
        f"{', '.join(f'{x:.2f}' for x in result['load_average_after'])}.", "",
        "| workers | batch | trials | start-up [s] | trials/min | evaluation [s] | Ray overhead/trial [s] | overhead |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(f"| {r['workers']} | {r['batch_size']} | {r['trials']} | {r['startup_s']:.1f} | "
                     f"{r['trials_per_min']:.1f} | {r['eval_s']:.2f} | {r['overhead_s']:.2f} | "
                     f"{100 * r['overhead_rel']:.0f}% |")
    lines += ["", "Speed-up, 2 workers over 1: " + ", ".join(
        f"batch {b}: {s:.2f}x" for b, s in result["speedup_2_over_1"].items()) + " (target >= 1.6x; Ray overhead "
        "target < 20% of the evaluation time). The overhead compares the median evaluation with the mean interval "
        "between trials, so values within a few percent of zero are measurement noise.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
