"""Gradient strategies on the default space: fronts, search cost, and the memory of one search step.

1. Use the trained supernet in ``--run`` (train a short one there with ``automq.oneshot.train.train_supernet`` when it
   is missing: ``--train-epochs`` epochs on ``--train-subset`` images).
2. Search ``--space`` with the same budget levels on BitOps for every strategy, each into its own search
   directory under ``<out>/compare_gradient/`` (the format ``automq report`` reads):
   ``differentiable`` (eta-conditioned, one run, a sweep of eta values), ``dnas`` (fixed lambda, one hinge run
   per level) and ``ssps`` (one run per level; its decision order in ``ssps_decisions.json``). Ray/Optuna
   ``tune`` search directories found under ``--tune-results`` are added to the comparison as they are.
3. Measure the peak memory of one search step, each in a fresh subprocess (max RSS from ``getrusage`` minus the
   resident size just before the step, after a two-image warm-up step): training the largest subnet, an SSPS
   single-path architecture step and a multi-branch (DNAS) architecture step, both with the architecture held
   at the largest and every format decision open.
4. Write ``<out>/compare_gradient.json``, ``compare_gradient.md`` and ``compare_gradient_front.png``.

    PYTHONPATH=. .venv/bin/python experiments/compare_gradient.py [--run runs/compare_gradient_supernet]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import automq.strategies.differentiable  # noqa: F401  (registers dnas, differentiable)
import automq.strategies.ssps  # noqa: F401  (registers ssps)
from automq.report import plots
from automq.cost import cost_range
from automq.oneshot.evaluate import OneShotEstimator
from automq.io import atomic_write_json, atomic_write_text
from automq.search.results import TRIALS_FILE, hypervolume_scales, load_search_dir, pareto_trials, space_objectives
from automq.search.driver import run_search
from automq.space.space import SearchSpace
from automq.strategies._archparams import ArchParams, DecisionTable
from automq.strategies._relaxed import FORMAT_KINDS, RelaxedSupernet
from automq.search.trial import Trial
from automq.oneshot.train import SUPERNET, load_supernet, train_supernet

RESULTS = Path(__file__).parent / "results"
MEMORY_MODES = ("subnet", "single_path", "multi_branch")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="spaces/mbv2_fmnist.yaml")
    parser.add_argument("--run", type=Path, default=Path("runs/compare_gradient_supernet"),
                        help="trained supernet run folder (trained here when it has no supernet.pt)")
    parser.add_argument("--train-epochs", type=int, default=3)
    parser.add_argument("--train-subset", type=int, default=6000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--levels", type=float, nargs="+", default=[3e7, 6e7, 9e7], help="BitOps budget levels")
    parser.add_argument("--steps", type=int, default=150, help="search steps (weight + architecture) per run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sweep", type=int, default=24, help="eta values decoded after the eta-conditioned run")
    parser.add_argument("--memory-batch", type=int, default=128)
    parser.add_argument("--tune-results", type=Path, default=RESULTS, help="where to look for tune search dirs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", choices=("differentiable", "dnas", "ssps"),
                        help="rerun only these searches (none: just rewrite the report); the other search "
                             "directories are kept and reported")
    parser.add_argument("--reuse-memory", action="store_true",
                        help="take the memory measurements from the previous compare_gradient.json")
    parser.add_argument("--memory-probe", choices=MEMORY_MODES, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------ memory
def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def memory_probe(mode: str, run: Path, batch: int) -> dict[str, Any]:
    """Peak memory of one training step in this (fresh) process; the architecture is the largest."""
    torch.manual_seed(0)
    space = SearchSpace.from_file(run / "space.yaml")
    supernet = load_supernet(run, space).train()
    size = space.dataset.input_size
    images = torch.randn(batch, space.dataset.in_chans, size, size)
    labels = torch.randint(0, space.dataset.num_classes, (batch,))
    if mode == "subnet":
        supernet.set_active(space.largest())

        def step(images: torch.Tensor, labels: torch.Tensor) -> None:
            F.cross_entropy(supernet(images), labels).backward()
    else:
        table = DecisionTable(space)
        arch = ArchParams(table)
        largest = table.choice_of(space.largest())
        formats = table.rows_where(FORMAT_KINDS)
        for row in range(table.shape[0]):
            if not formats[row]:
                arch.fix(row, largest[row])
        relaxed = RelaxedSupernet(supernet, table, relaxation=mode)
        generator = torch.Generator().manual_seed(0)

        def step(images: torch.Tensor, labels: torch.Tensor) -> None:
            weights = torch.where(relaxed.mixed_rows[:, None], arch.probs(), arch.sample(generator))
            F.cross_entropy(relaxed(images, weights), labels).backward()
    # One-time allocations (kernel caches, lazily built buffers; over 100 MB on the first relaxed step) happen in
    # a warm-up step on two images, whose own peak stays far below the measured step's.
    step(images[:2], labels[:2])
    supernet.zero_grad(set_to_none=True)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed memory back, so RSS is a clean baseline
    before, max_before = _rss_mb(), _max_rss_mb()
    start = time.perf_counter()
    step(images, labels)
    seconds = time.perf_counter() - start
    peak = _max_rss_mb()
    return {"mode": mode, "batch": batch, "rss_before_mb": before, "max_rss_before_mb": max_before,
            "max_rss_after_mb": peak, "step_mb": peak - before, "step_s": seconds,
            "peak_seen": peak > max_before}


def measure_memory(run: Path, batch: int, threads: int) -> dict[str, Any]:
    """Each mode in its own subprocess, and the ratios to training the largest subnet."""
    results = {}
    for mode in MEMORY_MODES:
        command = [sys.executable, __file__, "--memory-probe", mode, "--run", str(run),
                   "--memory-batch", str(batch), "--threads", str(threads)]
        # A fixed mmap threshold makes glibc return every freed tensor to the OS, so RSS follows live memory
        # instead of the allocator's high-water mark.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    base = results["subnet"]["step_mb"]
    for mode in MEMORY_MODES:
        results[mode]["ratio_to_subnet"] = results[mode]["step_mb"] / base
    return results


# ------------------------------------------------------------------------------------------------ searches
def ensure_supernet(args: argparse.Namespace, space: SearchSpace) -> dict[str, Any]:
    if not (args.run / SUPERNET).is_file():
        train_supernet(space, args.run, epochs=args.train_epochs, train_subset=args.train_subset, progress=False)
    run_info = json.loads((args.run / "run.json").read_text())
    epochs = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"run": str(args.run), "training": run_info["config"]["training"], "epochs": epochs,
            "train_s": sum(e["wall_s"] for e in epochs)}


def search_plan(args: argparse.Namespace) -> dict[str, tuple[dict[str, Any], int]]:
    """Strategy name -> (constructor options, number of evaluations)."""
    common = {"steps": args.steps, "batch_size": args.batch_size}
    levels = list(args.levels)
    return {
        "differentiable": ({**common, "sweep": args.sweep}, args.sweep),
        "dnas": ({**common, "lambdas": [2.0], "levels": levels, "penalty": "hinge"}, len(levels)),
        "ssps": ({**common, "levels": levels}, len(levels)),
    }


def run_searches(args: argparse.Namespace, space: SearchSpace, estimator: OneShotEstimator) -> dict[str, Path]:
    root = args.out / "compare_gradient"
    dirs = {}
    for name, (options, evaluations) in search_plan(args).items():
        out = root / name
        dirs[name] = out
        if args.only is not None and name not in args.only:
            continue
        shutil.rmtree(out, ignore_errors=True)  # this script's own output: a rerun replaces it
        if name == "ssps":
            options = {**options, "out_dir": str(out)}
        start = time.perf_counter()
        log = run_search(space, out=out, strategy=name, trials=evaluations, options=options, evaluator=estimator,
                         progress=False)
        print(f"{name}: {len(log.trials)} trials in {time.perf_counter() - start:.0f} s", flush=True)
    return dirs


def find_tune_dirs(root: Path, space: SearchSpace) -> dict[str, Path]:
    """Ray/Optuna (``tune``) search directories of the same space under ``root``."""
    found = {}
    for run_file in sorted(root.rglob("run.json")):
        try:
            info = json.loads(run_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        has_trials = (run_file.parent / TRIALS_FILE).is_file()  # committed benchmarks keep some of them gzipped
        if (info.get("strategy") == "tune" and has_trials
                and Path(str(info.get("space", ""))).name == Path(space.source).name):
            found[f"tune ({run_file.parent.name})"] = run_file.parent
    return found


# ------------------------------------------------------------------------------------------------ summary
def summarise(label: str, path: Path, space: SearchSpace, levels: list[float]) -> dict[str, Any]:
    result = load_search_dir(path)
    trials = result.trials
    feasible = [t for t in trials if t.feasible]
    front, volume = pareto_trials(trials, space_objectives(space), hypervolume_scales(space))
    runs = _search_runs(trials)
    return {
        "label": label,
        "path": str(path),
        "wall_s": result.run.get("wall_s"),
        "search_s": sum(seconds for seconds, _ in runs),
        "search_runs": len(runs),
        "search_steps": sum(steps for _, steps in runs),
        "evaluations": len(trials),
        "feasible": len(feasible),
        "hypervolume": volume,
        "front": [_point(t) for t in front],
        "points": [_point(t) for t in feasible],
        "per_level": {str(level): _best_under(feasible, level) for level in levels},
    }


def _search_runs(trials: list[Trial]) -> set[tuple[float, int]]:
    """``(seconds, steps)`` of each distinct search run (the trials decoded from one run repeat its summary)."""
    return {(t.info["search_s"], t.info["search_steps"]) for t in trials if "search_s" in t.info}


def _point(trial: Trial) -> dict[str, Any]:
    keys = ("eta", "lambda", "level")
    return {"id": trial.candidate.id, "accuracy": trial.metrics["accuracy"], "bitops": trial.metrics["bitops"],
            **{k: trial.info[k] for k in keys if trial.info.get(k) is not None},
            "repair_moves": len(trial.info.get("repair", []))}


def _best_under(trials: list[Trial], level: float) -> dict[str, Any] | None:
    inside = [t for t in trials if t.metrics["bitops"] <= level]
    return _point(max(inside, key=lambda t: t.metrics["accuracy"])) if inside else None


def front_figure(summaries: list[dict[str, Any]]) -> bytes:
    labels = [s["label"] for s in summaries]
    clouds = [plots.Cloud(s["label"], [p["bitops"] for p in s["points"]], [p["accuracy"] for p in s["points"]],
                          [p["bitops"] for p in s["front"]], [p["accuracy"] for p in s["front"]])
              for s in summaries]
    return plots.pareto_figure(clouds, plots.run_colors(labels), [],
                               plots.Axis("bitops", "BitOps", "M", 1e6, log=True), plots.Axis("accuracy", "accuracy"))


def markdown(report: dict[str, Any]) -> str:
    levels = report["levels"]
    lines = [
        "# Gradient strategies on mbv2_fmnist: fronts, search cost, memory",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}, torch threads {report['threads']}.  ",
        f"Wall time: supernet training {report['supernet']['train_s']:.0f} s, each search's in the table below (the "
        "memory probes' are not recorded).  ",
        f"Supernet: `{report['supernet']['run']}`, {report['supernet']['training']['epochs']} epochs on "
        f"{report['supernet']['training']['train_size']} training images ({report['supernet']['train_s']:.0f} s); "
        f"last epoch: val accuracy largest {report['supernet']['epochs'][-1]['val_acc_largest']:.3f}, smallest "
        f"{report['supernet']['epochs'][-1]['val_acc_smallest']:.3f}. This is a short training at small scale: "
        "absolute accuracies are low, and differences of about 0.01 are within the estimator's noise "
        f"({report['estimator']['val_images']} validation images).  ",
        f"Search: {report['steps']} steps (one weight step and one architecture step each) of batch "
        f"{report['batch_size']} per search run; BitOps budget levels {', '.join(f'{v / 1e6:g}M' for v in levels)}.",
        "",
        "## Search cost and fronts",
        "",
        "| strategy | search runs | search steps | search s | wall s | evaluations (estimator calls) | feasible |"
        " Pareto-optimal | hypervolume |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report["strategies"]:
        wall = f"{s['wall_s']:.0f}" if s["wall_s"] is not None else "n/a"
        lines.append(f"| {s['label']} | {s['search_runs']} | {s['search_steps']} | {s['search_s']:.0f} | {wall} | "
                     f"{s['evaluations']} | {s['feasible']} | {len(s['front'])} | {s['hypervolume']:.4f} |")
    lines += ["", "Best accuracy within each budget level (BitOps of that candidate):", "",
              "| strategy | " + " | ".join(f"<= {v / 1e6:g}M" for v in levels) + " |",
              "|---|" + "---|" * len(levels)]
    for s in report["strategies"]:
        cells = []
        for level in levels:
            best = s["per_level"][str(level)]
            cells.append("none" if best is None else f"{best['accuracy']:.3f} ({best['bitops'] / 1e6:.1f}M)")
        lines.append(f"| {s['label']} | " + " | ".join(cells) + " |")
    if not report["tune_found"]:
        lines += ["", f"No Ray/Optuna (`tune`) search directory of this space was found under "
                      f"`{report['tune_results']}`; rerun this script after one exists to add it."]
    lines += ["", "![fronts](compare_gradient_front.png)", "", "## Peak memory of one search step", "",
              f"Batch {report['memory']['subnet']['batch']}, the largest architecture, each mode in a fresh process: "
              "max RSS after the step minus the resident size just before it.", "",
              "| step | memory MB | ratio to training the largest subnet | step s |", "|---|---|---|---|"]
    names = {"subnet": "training the largest subnet (reference)", "single_path": "SSPS single-path architecture step",
             "multi_branch": "DNAS multi-branch architecture step (all format pairs)"}
    for mode, result in report["memory"].items():
        lines.append(f"| {names[mode]} | {result['step_mb']:.0f} | {result['ratio_to_subnet']:.2f} | "
                     f"{result['step_s']:.2f} |")
    by_label = {s["label"]: s for s in report["strategies"]}
    memory = report["memory"]
    lines += ["", "## Reading", "",
              f"- One eta-conditioned run gave {by_label['differentiable']['evaluations']} candidates from one "
              f"training of the architecture distribution, {len(by_label['differentiable']['front'])} of them "
              "Pareto-optimal "
              "(the others are dominated by a candidate of the same run); fixed-lambda DNAS and SSPS need one "
              f"search run per budget level ({by_label['dnas']['search_runs']} and {by_label['ssps']['search_runs']} "
              "here) and give one candidate each.",
              f"- An SSPS single-path step needs {memory['single_path']['ratio_to_subnet']:.2f}x the memory of "
              "training the largest subnet (target: at most 1.3x); computing and mixing every format pair, as "
              f"multi-branch DNAS does, needs {memory['multi_branch']['ratio_to_subnet']:.1f}x.",
              "- Search and wall times were measured on a shared 2-core machine with other jobs running; compare "
              "them within this table only."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.run, args.memory_batch)))
        return
    space = SearchSpace.from_file(args.space)
    low, high = cost_range(space)["bitops"]
    if not all(low <= level <= high for level in args.levels):
        raise SystemExit(f"--levels must lie within the space's BitOps range [{low:.4g}, {high:.4g}]")
    supernet = ensure_supernet(args, space)
    if args.reuse_memory:
        memory = json.loads((args.out / "compare_gradient.json").read_text())["memory"]
    else:
        memory = measure_memory(args.run, args.memory_batch, args.threads)
    estimator = OneShotEstimator.from_run(args.run, space=space)
    dirs = {**run_searches(args, space, estimator), **find_tune_dirs(args.tune_results, space)}
    summaries = [summarise(label, path, space, args.levels) for label, path in dirs.items()]
    report = {
        "command": " ".join(sys.argv), "machine": platform.platform(), "threads": args.threads,
        "space": args.space, "levels": args.levels, "steps": args.steps, "batch_size": args.batch_size,
        "supernet": supernet, "estimator": {"val_images": sum(len(y) for _, y in estimator.val),
                                            "calib_images": sum(len(y) for _, y in estimator.calib)},
        "strategies": summaries, "tune_found": any(label.startswith("tune") for label in dirs),
        "tune_results": str(args.tune_results), "memory": memory,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "compare_gradient.json", report)
    atomic_write_text(args.out / "compare_gradient.md", markdown(report))
    (args.out / "compare_gradient_front.png").write_bytes(front_figure(summaries))


if __name__ == "__main__":
    main()
