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

``--study resolution`` (issue 16) measures instead, in one 1-thread process: candidates per minute and the binomial
standard error at each ``--images`` count; whether scores change between 1 and 2 torch threads, with BN
recalibration pinned to one thread and (as before) not; the neighbour path (uniform int4/int4, then one more
layer's activation raised to int8 per step) with paired standard errors at the search's and the whole split's
resolution; and a ``--search-trials`` random search with and without its refinement, and with the raced refinement
(time per trial, the front's errors). Results go to ``<name>_resolution.{json,md}``.

    PYTHONPATH=. .venv/bin/python experiments/bench_estimator.py --study resolution --run RUN_DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automq.io import atomic_write_json, atomic_write_text
from automq.model.supernet import Supernet
from automq.oneshot import evaluate
from automq.oneshot.evaluate import ESTIMATOR_THREADS, OneShotEstimator, torch_threads
from automq.oneshot.paired import paired_difference
from automq.oneshot.train import load_space_data, load_supernet, training_summary, training_text
from automq.search.driver import run_search
from automq.search.refine import RACE_FRACTION, refine_front
from automq.search.results import pareto_trials
from automq.space.candidate import Candidate
from automq.space.space import SearchSpace
from provenance import command, machine, machine_text

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_PER_MINUTE = 20.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", choices=["throughput", "resolution"], default="throughput")
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
    parser.add_argument("--images", type=int, nargs="+", default=[2000, 5000, 10000],
                        help="resolution study: validation image counts to time")
    parser.add_argument("--path-steps", type=int, default=10, help="resolution study: neighbour-path steps")
    parser.add_argument("--thread-candidates", type=int, default=10, help="resolution study: candidates "
                        "scored under 1 and 2 threads")
    parser.add_argument("--search-trials", type=int, default=60, help="resolution study: trials of the random "
                        "search that is refined (0: none)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="bench_estimator", help="output file stem, e.g. for a loaded machine")
    args = parser.parse_args(argv)
    if min(args.candidates, *args.threads, *args.processes, *args.images, args.thread_candidates) < 1:
        parser.error("--candidates, --threads, --processes, --images and --thread-candidates must be at least 1")
    if min(args.warmup, args.path_steps, args.search_trials) < 0:
        parser.error("--warmup, --path-steps and --search-trials must be at least 0")
    return args


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
    if args.study == "resolution":
        return main_resolution(args)
    reference = build_estimator(args, ESTIMATOR_THREADS)  # validates the inputs here, and sizes the report
    rows = []
    for processes in args.processes:
        for threads in args.threads:
            rows.append(time_cell(args, threads, processes))
            print(f"{processes} process(es) x {threads} thread(s): {rows[-1]['per_minute']:.1f} candidates/min",
                  flush=True)
    best = max(rows, key=lambda row: row["per_minute"])
    result = {
        "command": command(),
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
    best = result["best"]
    verdict = "meets" if result["meets_target"] else "MISSES"
    return "\n".join([
        "# One-shot estimator throughput",
        "",
        f"`{result['command']}`",
        "",
        f"- space: `{result['space']}`, supernet: {result['supernet']}",
        f"- per candidate: BN recalibration on {result['calib_images']} train images (batch "
        f"{result['calib_batch']}), validation on {result['val_images']} val images (batch {result['eval_batch']})",
        f"- machine: {machine_text(result['machine'])}; the load averages are "
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


# --- resolution study (issue 16): noise of an estimate, its cost, thread independence, refinement ------------------


def resolution_study(args: argparse.Namespace) -> dict[str, Any]:
    """Every part of the resolution study, in one process on one torch thread (except the thread comparison)."""
    estimator = build_estimator(args, ESTIMATOR_THREADS)
    sizes = [min(n, estimator.max_images) for n in args.images]
    rng = np.random.default_rng(args.seed)
    sampled = [estimator.space.sample(rng) for _ in range(args.candidates)]
    path = neighbour_path(estimator.space, args.path_steps)
    return {
        "resolutions": [time_resolution(estimator, sampled, n) for n in sizes],
        "threads": thread_dependence(args, sampled[: args.thread_candidates]),
        "path": path_differences(estimator, path, [sizes[0], estimator.max_images]),
        "path_layers": [changed_layer(a, b) for a, b in zip(path, path[1:])],
        "search": refined_search(args, estimator) if args.search_trials else None,
    }


def time_resolution(estimator: OneShotEstimator, candidates: list[Candidate], images: int) -> dict[str, Any]:
    """Seconds per fresh estimate on ``images`` validation images, and the binomial errors they carry."""
    estimator.estimate(candidates[0], images=images)  # untimed: first use of these batches
    estimator.clear_cache()
    wall, errors = [], []
    for candidate in candidates:
        start = time.perf_counter()
        errors.append(estimator.estimate(candidate, images=images)["accuracy_se"])
        wall.append(time.perf_counter() - start)
    return {"images": images, "mean_s": statistics.mean(wall), "median_s": statistics.median(wall),
            "per_minute": 60.0 / statistics.mean(wall), "se_mean": statistics.mean(errors), "se_max": max(errors),
            "load_average_1m": os.getloadavg()[0]}


def thread_dependence(args: argparse.Namespace, candidates: list[Candidate]) -> list[dict[str, Any]]:
    """Scores under 1 and 2 torch threads, with BN recalibration pinned to one thread (this version) and with it
    run on the caller's count (as before): how many candidates change, and by how much."""
    rows = []
    for label, calibration in (("pinned to 1 thread", 1), ("caller's thread count (before)", None)):
        scores = {}
        for count in (1, 2):
            evaluate.CALIBRATION_THREADS = calibration
            estimator = build_estimator(args, None)  # the caller's count reaches the estimate
            with torch_threads(count):
                scores[count] = [estimator.correctness(c) for c in candidates]
        evaluate.CALIBRATION_THREADS = 1
        gaps = [abs(a.accuracy - b.accuracy) for a, b in zip(scores[1], scores[2])]
        rows.append({"calibration": label, "candidates": len(candidates),
                     "identical": sum(a == b for a, b in zip(scores[1], scores[2])),
                     "accuracy_changed": sum(g > 0 for g in gaps), "max_change_points": 100 * max(gaps)})
    return rows


def neighbour_path(space: SearchSpace, steps: int) -> list[Candidate]:
    """Uniform int4/int4 (menus clamped), then one more layer's activation raised to int8 at each step."""
    path = [space.uniform("int4", "int4", clamp=True)]
    for name, _, a_fmt in path[0].formats:
        if len(path) > steps:
            break
        if a_fmt != "int8" and "int8" in space.layer_menu(name)[1]:
            formats = tuple((n, w, "int8" if n == name else a) for n, w, a in path[-1].formats)
            path.append(dataclasses.replace(path[-1], formats=formats))
    return path


def changed_layer(before: Candidate, after: Candidate) -> str:
    return next(n for (n, _, a), (_, _, b) in zip(before.formats, after.formats) if a != b)


def path_differences(estimator: OneShotEstimator, path: list[Candidate], sizes: list[int]) -> list[dict[str, Any]]:
    """Accuracy of each step and its paired difference to the step before, at each image count."""
    rows = []
    for images in sizes:
        scores = [estimator.correctness(c, images=images) for c in path]
        steps = [{"accuracy": s.accuracy, "se": s.se} for s in scores]
        for step, (before, after) in zip(steps[1:], zip(scores, scores[1:])):
            difference = paired_difference(after, before)
            step["difference"], step["paired_se"] = difference.value, difference.se
        rows.append({"images": images, "steps": steps})
    return rows


def refined_search(args: argparse.Namespace, estimator: OneShotEstimator) -> dict[str, Any]:
    """A random search at the search's resolution, then its refinement without and with the race, each from the
    state the search left (trial metrics and the estimator's cached scores): time per trial of each."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        log = run_search(estimator.space, out=folder, strategy="random", trials=args.search_trials, seed=args.seed,
                         evaluator=estimator, progress=False, refine=False)
        search_s = time.perf_counter() - start
        before = front_errors(log)
        searched = [dict(t.metrics) for t in log.trials]
        cached = dict(estimator._scores)  # the search's scores, which a refinement continues
        refinements = {}
        for label, fraction in (("plain", None), ("raced", RACE_FRACTION)):
            for trial, metrics in zip(log.trials, searched):
                trial.metrics = dict(metrics)
            estimator._scores = dict(cached)
            start = time.perf_counter()
            refined = refine_front(log, estimator, race_fraction=fraction)
            refine_s = time.perf_counter() - start
            refinements[label] = {"refine_s": refine_s, "rescored": len(refined), **log.run_info["refine"],
                                  "per_trial_refined_s": (search_s + refine_s) / len(log.trials),
                                  "ratio": (search_s + refine_s) / search_s, "front_after": front_errors(log),
                                  "front": sorted(t.number for t in pareto_trials(log.trials, log.objectives,
                                                                                   log.scales)[0])}
    return {"trials": len(log.trials), "search_s": search_s, "per_trial_s": search_s / len(log.trials),
            "front_before": before, **refinements["plain"], "raced": refinements["raced"]}


def front_errors(log: Any) -> dict[str, Any]:
    front, _ = pareto_trials(log.trials, log.objectives, log.scales)
    errors = [t.metrics["accuracy_se"] for t in front]
    return {"size": len(front), "se_mean": statistics.mean(errors), "se_max": max(errors),
            "images": sorted({t.metrics["accuracy_images"] for t in front})}


def main_resolution(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    study = resolution_study(args)
    result = {"command": command(), "machine": machine(), "space": args.space,
              "supernet": supernet_note(args.run), "candidates": args.candidates, **study,
              "wall_s": time.perf_counter() - start}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"{args.name}_resolution.json", result)
    atomic_write_text(args.out / f"{args.name}_resolution.md", report_resolution(result))
    print(report_resolution(result))
    return result


def report_resolution(result: dict) -> str:
    search = result["search"]
    lines = [
        "# One-shot estimator resolution (issue 16)", "",
        f"`{result['command']}`", "",
        f"- space: `{result['space']}`, supernet: {result['supernet']}",
        f"- machine: {machine_text(result['machine'])}; one estimator process "
        f"on one torch thread, next to other jobs (load averages below); wall time {result['wall_s']:.0f} s",
        "",
        "## Cost and noise per resolution",
        f"{result['candidates']} random candidates; per estimate: BN recalibration on the calibration images, then "
        "validation on the first N val images. SE: binomial standard error of the accuracy, in points.", "",
        "| val images | s/candidate (mean) | median | candidates/min | SE mean | SE max | load avg |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *(f"| {r['images']} | {r['mean_s']:.3f} | {r['median_s']:.3f} | {r['per_minute']:.1f} | "
          f"{100 * r['se_mean']:.2f} | {100 * r['se_max']:.2f} | {r['load_average_1m']:.1f} |"
          for r in result["resolutions"]),
        "", "## Thread (in)dependence",
        "The same candidates scored with the caller's torch thread count set to 1 and to 2 (`threads=None`).", "",
        "| BN recalibration | candidates | identical per-image results | accuracy changed | max change (points) |",
        "|---|---:|---:|---:|---:|",
        *(f"| {r['calibration']} | {r['candidates']} | {r['identical']} | {r['accuracy_changed']} | "
          f"{r['max_change_points']:.2f} |" for r in result["threads"]),
        "", "## Neighbour path",
        "Uniform int4/int4 (menus clamped: depthwise weights, stem and classifier stay 8-bit), then one more layer's "
        "activation raised to int8 per step. Accuracy ± binomial SE; step: difference to the previous candidate ± "
        "its paired SE (same images), `*` where |difference| > 2 paired SE. Points.", "",
        "| step | layer raised | " + " | ".join(f"{r['images']} images: accuracy | step" for r in result["path"])
        + " |",
        "|---:|---|" + "---:|---:|" * len(result["path"]),
    ]
    layers = ["(int4/int4)", *result["path_layers"]]
    for i, layer in enumerate(layers):
        cells = []
        for r in result["path"]:
            step = r["steps"][i]
            cells.append(f"{100 * step['accuracy']:.2f} ± {100 * step['se']:.2f}")
            if i == 0:
                cells.append("")
            else:
                mark = "*" if abs(step["difference"]) > 2 * step["paired_se"] else ""
                cells.append(f"{100 * step['difference']:+.2f} ± {100 * step['paired_se']:.2f}{mark}")
        lines.append(f"| {i} | {layer} | " + " | ".join(cells) + " |")
    if search:
        before, after = search["front_before"], search["front_after"]
        lines += [
            "", "## Refinement of a search",
            f"A random search of {search['trials']} trials at the search's resolution, then `refine_front` "
            f"without the race (`race_fraction=None`) re-scored {search['rescored']} trials (the front and those "
            "within 2 paired SE of it) on the whole split.", "",
            "| | s | s per trial | front size | front SE mean | front SE max | front images |",
            "|---|---:|---:|---:|---:|---:|---|",
            f"| search | {search['search_s']:.1f} | {search['per_trial_s']:.3f} | {before['size']} | "
            f"{100 * before['se_mean']:.2f} | {100 * before['se_max']:.2f} | {before['images']} |",
            f"| search + refinement | {search['search_s'] + search['refine_s']:.1f} | "
            f"{search['per_trial_refined_s']:.3f} | {after['size']} | {100 * after['se_mean']:.2f} | "
            f"{100 * after['se_max']:.2f} | {after['images']} |",
            "", f"Refinement costs {search['ratio']:.2f}x the search's time per trial.",
        ]
        if raced := search.get("raced"):
            after = raced["front_after"]
            lines += [
                "", "### Raced refinement",
                f"The same search, refined from the same state with the race (`refine_front`'s default): the "
                f"{raced['raced']} candidates near the front scored on {raced['race_images']} images first, only "
                f"those not beaten there by more than 2 paired SE taken to the whole split ({raced['rescored']} "
                "re-scored on it).", "",
                "| | refinement s | s per trial | ratio to the search | re-scored on the whole split | front size | "
                "front SE max | front images |",
                "|---|---:|---:|---:|---:|---:|---:|---|",
                *(f"| {label} | {r['refine_s']:.1f} | {r['per_trial_refined_s']:.3f} | {r['ratio']:.2f}x | "
                  f"{r['rescored']} | {r['front_after']['size']} | {100 * r['front_after']['se_max']:.2f} | "
                  f"{r['front_after']['images']} |" for label, r in (("without the race", search), ("raced", raced))),
                "", f"Same front with and without the race: {'yes' if raced['front'] == search['front'] else 'NO'}; "
                f"the race cuts the refinement's time by {100 * (1 - raced['refine_s'] / search['refine_s']):.0f}%.",
            ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
