"""Every strategy on one space, with the same budget and the same evaluator, then one report.

A config (``experiments/configs/compare_all_<name>.yaml``; ``cpu-small`` fits 2 CPU cores in about an hour, ``gpu``
is for a lent GPU) names the space, the supernet training, the evaluation budget per strategy and the strategies
with their options. The script

1. trains the one-shot supernet of the space into ``<work>/supernet`` (or uses ``--supernet``; a stopped training
   resumes from its checkpoint);
2. runs each strategy with :func:`automq.search.driver.run_search` into ``<work>/searches/<label>``, each with a fresh
   one-shot estimator of that supernet (so no strategy profits from another's cache) and the same number of
   evaluations (``evaluations``, or ``--evaluations N`` for all). Per-level strategies (``ssps``, ``dnas``,
   ``fliqs``) yield one candidate per budget level, so they get that many levels, spread evenly from the lowest to
   the highest of the config's ``levels`` (fractions of the largest candidate's BitOps). A strategy that still
   yields fewer distinct candidates (``uniform`` has one per format) is listed with its count, and every run's
   hypervolume is also given after the fewest evaluations any run made, so fronts of equal size are compared. A
   finished search is kept and skipped on a rerun, an interrupted one is resumed, and a strategy that fails is
   recorded with its error while the others go on;
3. measures the fronts and the uniform baselines on the dataset's test split
   (:func:`automq.report.final.measure_final`): each accuracy with its 95% interval, and a search *wins* a uniform
   budget only when it leads by more than two paired standard errors;
4. writes the report (:func:`automq.report.report.build_report`, which shows ``final.json``) and ``compare_all.json``
   / ``compare_all.md`` (command, machine, load, wall time per stage, evaluations and hypervolumes per strategy,
   the test-split comparison) into ``--results``, with a copy of every search directory's
   ``trials.jsonl``/``run.json``/``pareto.json`` so the report can be rebuilt from the results alone.

    .venv/bin/python experiments/compare_all.py --config cpu-small
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from automq.cli import show_info_logs
from automq.cost import cost_range
from automq.errors import AutomqError
from automq.io import atomic_write_json, atomic_write_text
from automq.oneshot.paired import binomial_se
from automq.report.final import FINAL_FILE, Z95, measure_final
from automq.report.report import build_report
from automq.search.results import PARETO_FILE, RUN_FILE, SPACE_FILE, TRIALS_FILE, load_trials
from automq.search.driver import run_search
from automq.space.space import SearchSpace
from automq.search.strategy import create_strategy, strategy_names
from automq.oneshot.train import SUPERNET, train_supernet, training_summary, training_text
from provenance import command, machine, machine_text

ROOT = Path(__file__).resolve().parent
CONFIGS = ROOT / "configs"
LEVEL_OPTION = {"ssps": "levels", "dnas": "levels", "fliqs": "targets"}  # strategies run once per budget level
CONFIG_KEYS = {"description", "space", "threads", "supernet", "evaluations", "levels", "strategies"}


@dataclass(frozen=True)
class Config:
    """A parsed, validated comparison config."""

    name: str
    description: str
    space: Path
    threads: int
    supernet: dict[str, Any]
    evaluations: int
    levels: tuple[float, ...]
    strategies: dict[str, tuple[str, dict[str, Any]]]  # label -> (registered strategy, constructor options)


def load_config(name_or_path: str | Path) -> Config:
    """Read a config by name (``cpu-small`` -> ``experiments/configs/compare_all_cpu-small.yaml``) or path, and
    check it before anything runs: unknown keys, strategies or options are errors naming the field."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIGS / f"compare_all_{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem.removeprefix("compare_all_") for p in CONFIGS.glob("compare_all_*.yaml"))
        raise AutomqError(f"no comparison config {path}; shipped configs: {', '.join(known)}")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise AutomqError(f"{path}: expected a mapping of {sorted(CONFIG_KEYS)}")
    unknown, missing = set(raw) - CONFIG_KEYS, {"space", "evaluations", "strategies"} - set(raw)
    if unknown or missing:
        raise AutomqError(f"{path}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    levels = tuple(float(x) for x in raw.get("levels", (0.25, 0.5, 0.75)))
    if not levels or not all(0 < x <= 1 for x in levels):
        raise AutomqError(f"{path}: levels must be fractions in (0, 1] of the largest candidate's BitOps")
    if not isinstance(raw["evaluations"], int) or raw["evaluations"] < 1:
        raise AutomqError(f"{path}: evaluations must be a positive integer, got {raw['evaluations']!r}")
    strategies = {label: _strategy_entry(path, label, entry) for label, entry in (raw["strategies"] or {}).items()}
    if not strategies:
        raise AutomqError(f"{path}: strategies is empty")
    return Config(path.stem.removeprefix("compare_all_"), str(raw.get("description", "")),
                  Path(raw["space"]), int(raw.get("threads", 1)), dict(raw.get("supernet") or {}),
                  raw["evaluations"], levels, strategies)


def _strategy_entry(path: Path, label: str, entry: Any) -> tuple[str, dict[str, Any]]:
    options = dict(entry or {})
    name = options.pop("strategy", label)
    if name not in strategy_names():
        raise AutomqError(f"{path}: strategies.{label}.strategy: unknown strategy {name!r}; available: "
                          f"{', '.join(strategy_names())}")
    try:  # catch a misspelt option now, not after an hour of other strategies
        create_strategy(name, **options, **({LEVEL_OPTION[name]: [1.0]} if name in LEVEL_OPTION else {}))
    except (TypeError, ValueError) as exc:
        raise AutomqError(f"{path}: strategies.{label}: {name} rejects its options {options}: {exc}") from None
    return name, options


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="cpu-small", help="config name or YAML path (default: cpu-small)")
    parser.add_argument("--work", type=Path,
                        help="folder of the supernet and searches (default: runs/compare_all_<config>)")
    parser.add_argument("--results", type=Path, help="where the report and summary go "
                        "(default: experiments/results/compare_all_<config>)")
    parser.add_argument("--supernet", type=Path, help="a trained supernet run folder of the space to use instead")
    parser.add_argument("--only", nargs="+", metavar="LABEL", help="run only these strategies of the config "
                        "(searches already in --work are still reported)")
    parser.add_argument("--evaluations", type=int, metavar="N", help="evaluations per strategy, for every strategy "
                        "(default: the config's evaluations)")
    parser.add_argument("--test-images", type=int, metavar="N", help="score the final fronts on the first N test "
                        "images (default: the whole test split)")
    parser.add_argument("--data", help="dataset folder (overrides dataset.root)")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------ stages
def ensure_supernet(config: Config, space: SearchSpace, folder: Path, data_root: str | None) -> dict[str, Any]:
    """Train the supernet into ``folder`` unless it is there; resume a stopped training."""
    start = time.time()
    if not (folder / SUPERNET).is_file():
        options = config.supernet
        train_supernet(space, folder, epochs=options.get("epochs"), train_subset=options.get("subset"),
                       resume=(folder / "checkpoint.pt").is_file(), data_root=data_root)
    return {"path": str(folder), "trained_here_s": time.time() - start, **training_summary(folder)}


def spread_levels(levels: Sequence[float], count: int) -> list[float]:
    """``count`` levels evenly spaced from the lowest to the highest of ``levels`` (the levels themselves, sorted,
    when there are ``count`` of them): a per-level strategy makes one evaluation per level, so this gives it as many
    evaluations as the others."""
    if len(levels) == count:
        return sorted(levels)
    low, high = min(levels), max(levels)
    if count == 1:
        return [high]
    return [low + (high - low) * step / (count - 1) for step in range(count)]


def level_options(config: Config, space: SearchSpace, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The strategy's options, with ``config.evaluations`` BitOps levels for a per-level strategy that has none."""
    options = dict(options)
    if name in LEVEL_OPTION and LEVEL_OPTION[name] not in options:
        largest = cost_range(space)["bitops"][1]
        options[LEVEL_OPTION[name]] = [fraction * largest for fraction in spread_levels(config.levels,
                                                                                        config.evaluations)]
    return options


def run_strategy(config: Config, space: SearchSpace, label: str, supernet: Path, folder: Path,
                 data_root: str | None) -> dict[str, Any]:
    """One search; a finished one is skipped, an interrupted one resumed, an exception recorded."""
    name, options = config.strategies[label]
    options = level_options(config, space, name, options)
    if _finished(folder):
        return {"label": label, "strategy": name, "status": "kept", **_search_summary(folder)}
    start = time.time()
    print(f"[compare_all] {label}: {name} {options}", flush=True)
    try:
        run_search(space, out=folder, supernet=supernet, strategy=name, trials=config.evaluations, options=options,
                   resume=(folder / TRIALS_FILE).is_file(), data_root=data_root)
    except Exception as exc:  # one strategy's failure must not cost the others' results
        error = f"{type(exc).__name__}: {exc}"
        print(f"[compare_all] {label} failed: {error}", file=sys.stderr, flush=True)
        return {"label": label, "strategy": name, "status": "failed", "error": error,
                "traceback": traceback.format_exc(limit=8), "wall_s": time.time() - start}
    return {"label": label, "strategy": name, "status": "ran", **_search_summary(folder)}


def _finished(folder: Path) -> bool:
    run = folder / RUN_FILE
    return run.is_file() and json.loads(run.read_text()).get("status") == "finished"


def _search_summary(folder: Path) -> dict[str, Any]:
    run = json.loads((folder / RUN_FILE).read_text())
    return {"options": run.get("options"), "wall_s": run.get("wall_s"), "trials": run.get("trials"),
            **evaluation_counts(folder)}


def evaluation_counts(folder: Path) -> dict[str, int]:
    """How many candidates the search sent to the evaluator (its ok trials) and how many of them were distinct."""
    evaluated = [trial for trial in load_trials(folder) if trial.status == "ok"]
    return {"evaluations": len(evaluated), "distinct": len({trial.candidate.id for trial in evaluated})}


def equal_evaluation_hypervolumes(report_runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Every run's hypervolume after the first ``k`` trials, ``k`` the fewest trials a competing (non-uniform) run
    made: the full hypervolumes compare fronts grown from different numbers of evaluations. ``report_runs`` are
    the ``runs`` of the report's ``summary.json`` (each with its ``hypervolume_curve``)."""
    curves = {run["run"]: run["hypervolume_curve"] for run in report_runs if run["hypervolume_curve"]}
    competing = [len(curves[run["run"]]) for run in report_runs
                 if run["run"] in curves and run["strategy"] != "uniform"]
    if not competing:
        return {"trials": None, "hypervolume": {}}
    fewest = min(competing)
    return {"trials": fewest, "hypervolume": {label: curve[min(fewest, len(curve)) - 1]
                                              for label, curve in curves.items()}}


def measure_on_test(folders: Sequence[Path], supernet: Path, results: Path, data_root: str | None,
                    test_images: int | None) -> dict[str, Any]:
    """The fronts and the uniform baselines on the test split (``final.json`` in ``results``), or why not."""
    try:
        final = measure_final(folders, supernet, results, data_root=data_root, test_images=test_images)
    except AutomqError as exc:  # no test split, no uniform search: the comparison still stands without it
        print(f"[compare_all] no test-split measurement: {exc}", file=sys.stderr, flush=True)
        (results / FINAL_FILE).unlink(missing_ok=True)  # a stale measurement must not stand in the new report
        return {"status": "not measured", "reason": str(exc)}
    return {"status": "measured", "test_images": final["test_images"], "margin_se": final["margin_se"],
            "wall_s": final["wall_s"], "summary": final["summary"], "comparisons": final["comparisons"]}


def copy_searches(folders: Mapping[str, Path], destination: Path) -> None:
    """The files the report is built from, so it can be rebuilt from the committed results alone."""
    for label, folder in folders.items():
        target = destination / label
        target.mkdir(parents=True, exist_ok=True)
        for name in (TRIALS_FILE, RUN_FILE, PARETO_FILE, SPACE_FILE):
            if (folder / name).is_file():
                shutil.copyfile(folder / name, target / name)


# ------------------------------------------------------------------------------------------------ summary
def markdown(summary: Mapping[str, Any]) -> str:
    """The run record: command, machine, load, wall times, evaluations and hypervolumes per strategy, and the
    test-split comparison; the fronts themselves are in report.md."""
    supernet = summary["supernet"]
    lines = [
        f"# Strategy comparison: config `{summary['config']}`", "",
        summary["description"], "",
        f"- command: `{summary['command']}`",
        f"- space: `{summary['space']}`; {summary['evaluations']} evaluations per strategy; per-level strategies at "
        f"{summary['evaluations']} levels from {min(summary['levels']):g} to {max(summary['levels']):g} of the "
        "largest candidate's BitOps",
        f"- machine: {machine_text(summary['machine'])}; 1-min load average {summary['load_before'][0]:.1f} at the "
        f"start, {summary['load_after'][0]:.1f} at the end",
        f"- wall time: {summary['wall_s'] / 60:.1f} min in this invocation; by stage: searches "
        f"{sum(run.get('wall_s') or 0 for run in summary['strategies']) / 60:.1f} min in all (each in the table; a "
        f"'kept' one ran in an earlier invocation), test-split measurement "
        f"{(summary['final'].get('wall_s') or 0) / 60:.1f} min, supernet training: {training_text(supernet)}",
        "", *strategy_table(summary), "", *final_section(summary["final"]), "",
        "The fronts, per-layer formats and search costs are in [report.md](report.md) and the self-contained "
        "[report.html](report.html).",
    ]
    return "\n".join(lines) + "\n"


def strategy_table(summary: Mapping[str, Any]) -> list[str]:
    """One row per strategy: status, evaluations (distinct), trial counts, hypervolumes, wall time; then the
    strategies that yielded fewer distinct candidates than asked."""
    equal = summary["equal_evaluations"]
    at = f"hypervolume at {equal['trials']} trials" if equal["trials"] else "hypervolume at equal trials"
    lines = [f"| strategy | registered name | status | evaluations (distinct) | trials (ok/infeasible/failed) | "
             f"hypervolume | {at} | wall time (s) |", "|---|---|---|---|---|---:|---:|---:|"]
    short = []
    for run in summary["strategies"]:
        label, counts = run["label"], run.get("trials") or {}
        trials = "/".join(str(counts.get(k, 0)) for k in ("ok", "infeasible", "failed")) if counts else "-"
        evaluations = f"{run['evaluations']} ({run['distinct']})" if "distinct" in run else "-"
        if run.get("distinct", summary["evaluations"]) < summary["evaluations"]:
            short.append(f"{label} {run['distinct']}")
        wall = f"{run['wall_s']:.0f}" if run.get("wall_s") is not None else "-"
        status = run["status"] + (f": {run['error']}" if run.get("error") else "")
        lines.append(f"| {label} | {run['strategy']} | {status} | {evaluations} | {trials} | "
                     f"{_number(summary['hypervolume'].get(label))} | {_number(equal['hypervolume'].get(label))} | "
                     f"{wall} |")
    if short:
        lines += ["", f"Fewer distinct candidates than the {summary['evaluations']} evaluations asked (the strategy "
                  f"yields no more, or repeated a candidate): {', '.join(short)}."]
    return lines


def final_section(final: Mapping[str, Any]) -> list[str]:
    """The test-split comparison: accuracies with their 95% intervals, differences with their paired 95%
    intervals, and the verdict (a win needs a lead above ``margin_se`` paired standard errors)."""
    lines = ["## Fronts on the test split", ""]
    if final["status"] != "measured":
        return lines + [f"Not measured: {final['reason']}"]
    images = final["test_images"]
    lines += [f"Each search's most accurate candidate (by validation accuracy) at or below each uniform budget against "
              f"every uniform format there, all measured on the same {images} test images: accuracy ± 95% "
              f"interval ({Z95:.2f} binomial standard errors of the test images), difference [paired 95% interval, "
              f"counting the calibration blocks too]; a *win* needs a lead above {final['margin_se']:g} paired "
              "standard errors and that interval above zero over each of them, a *loss* some uniform format ahead by "
              "as much, else a *tie*; the reference shown is the binding one.", "",
              "| BitOps budget | uniform reference (binding) | its test accuracy | search | searched test accuracy | "
              "difference [points] | verdict |", "|---:|---|---:|---|---:|---:|---|"]
    for c in final["comparisons"]:
        reference = _accuracy(c["uniform_test_accuracy"], images)
        if c["verdict"] == "none":
            lines.append(f"| {c['budget']:.3g} | {c['uniform']} | {reference} | {c['run']} | - | - | no candidate |")
            continue
        low, high = (100 * x for x in c["ci95"])
        lines.append(f"| {c['budget']:.3g} | {c['uniform']} | {reference} | {c['run']} | "
                     f"{_accuracy(c['searched_test_accuracy'], images)} | "
                     f"{100 * c['difference']:+.2f} [{low:+.2f}, {high:+.2f}] | {c['verdict']} |")
    lines += ["", "Budgets won / tied / lost / without a candidate: " + "; ".join(
        f"{run} {n['win']}/{n['tie']}/{n['loss']}/{n['none']}" for run, n in final["summary"].items()) + "."]
    return lines


def _accuracy(accuracy: float, images: int) -> str:
    """``85.00% ± 1.56``: the accuracy in percent and the half-width of its 95% interval in points."""
    return f"{100 * accuracy:.2f}% ± {100 * Z95 * binomial_se(accuracy, images):.2f}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
        if args.evaluations is not None:
            if args.evaluations < 1:
                raise AutomqError(f"--evaluations must be a positive integer, got {args.evaluations}")
            config = replace(config, evaluations=args.evaluations)
        space = SearchSpace.from_file(config.space)
        labels = args.only or list(config.strategies)
        if unknown := set(labels) - set(config.strategies):
            raise AutomqError(f"--only: {sorted(unknown)} are not strategies of {config.name}: "
                              f"{', '.join(config.strategies)}")
    except AutomqError as exc:
        print(f"compare_all: error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(config.threads)
    show_info_logs()
    work = args.work or Path("runs") / f"compare_all_{config.name}"
    results = args.results or ROOT / "results" / f"compare_all_{config.name}"
    start, load_before = time.time(), os.getloadavg()
    supernet = ensure_supernet(config, space, args.supernet or work / "supernet", args.data)
    folders = {label: work / "searches" / label for label in config.strategies}
    runs = [run_strategy(config, space, label, Path(supernet["path"]), folders[label], args.data)
            if label in labels else {"label": label, "strategy": config.strategies[label][0], "status": "skipped"}
            for label in config.strategies]
    present = {label: folder for label, folder in folders.items() if (folder / TRIALS_FILE).is_file()}
    results.mkdir(parents=True, exist_ok=True)
    copy_searches(present, results / "searches")
    final = measure_on_test(list(present.values()), Path(supernet["path"]), results, args.data, args.test_images)
    report = build_report(list(present.values()), results)
    summary = {"config": config.name, "description": config.description, "command": command(),
               "space": str(config.space), "evaluations": config.evaluations, "levels": list(config.levels),
               "machine": machine(), "load_before": load_before, "load_after": os.getloadavg(),
               "wall_s": time.time() - start, "supernet": supernet, "strategies": runs,
               "hypervolume": {run["run"]: run["hypervolume"] for run in report["runs"]},
               "equal_evaluations": equal_evaluation_hypervolumes(report["runs"]), "final": final}
    atomic_write_json(results / "compare_all.json", summary)
    atomic_write_text(results / "compare_all.md", markdown(summary))
    print(f"[compare_all] report in {results / 'report.html'}; run record in {results / 'compare_all.md'}")
    return 0 if all(run["status"] != "failed" for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
