"""FLIQS study on the default space: integer-only, float-only and mixed int+fp format search, and FLIQNAS.

Tests two claims of FLIQS (Dotzel et al., AutoML 2024) on our data:

1. a mixed int+fp format search beats the best uniform format at equal BitOps;
2. searching architecture and formats jointly (FLIQNAS) beats searching formats alone;

and measures two choices of this project's FLIQS and the paper's own setting, on the mixed menus:

3. the entropy schedule and the cost weight: the default (entropy weight 0.05 -> -0.3, ``beta = 1``) against an
   entropy weight that ends at 0 (never a penalty) and against ``beta = 0.25``, each scored by the shared estimator
   and compared with the default at the same target, paired on the same validation images;
4. the paper's setting (``init: scratch``): the policy and fresh weights trained together, the final candidate's
   accuracy read with those weights (no retraining, as the paper reports it), against uniform int8 and int4 trained
   from scratch the same way (FLIQS runs on one-candidate spaces: same steps, batches and schedule, no policy).

Every FLIQS run continues training a one-shot supernet of ``spaces/mbv2_fmnist.yaml`` (trained first, or given
with ``--supernet``) while its policy searches one of the menus of ``experiments/configs/fli*.yaml``, one run per
BitOps target: the cost of uniform int4, the midpoint, and the cost of uniform int8 (on the largest architecture).
Each result is scored by the shared one-shot estimator (the supernet as trained, BN recalibrated), like the
uniform baselines, and as it stands (the run's own weights, ``info.in_place``). Outputs, under ``--out``:

    fliqs_runs/<variant>/     search directories (``automq report`` reads them), with each run's policy log
    fliqs_summary.{md,json}   the numbers and a plain verdict per claim
    fliqs_front.png           accuracy against BitOps; fliqs_policy.png: policy entropy over the steps

A finished search directory is reused as it is (delete it to run that part again), so the summary and figures
can be rebuilt without searching (and a stopped study resumes at the run it was in). The supernet is trained with
the space's current recipe:

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python experiments/fliqs_study.py --steps 300 \
        --supernet runs/fliqs_supernet_current
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from matplotlib.figure import Figure

from automq.report import plots
from automq.cost import CostModel
from automq.oneshot.evaluate import OneShotEstimator
from automq.oneshot.paired import Difference
from automq.io import atomic_write_json, atomic_write_text, read_jsonl
from automq.search.results import SearchLog, load_search_dir
from automq.space.space import SearchSpace
from automq.strategies.fliqs import FLIQS, POLICY_LOG
from automq.search.strategy import Budget, evaluate_candidate
from automq.search.trial import Trial
from automq.oneshot.train import METRICS as TRAIN_METRICS
from automq.oneshot.train import SUPERNET, load_space_data, load_supernet, train_supernet
from provenance import machine, machine_text

ROOT = Path(__file__).resolve().parent
CONFIGS = ROOT / "configs"
VARIANTS = {  # label -> space file; the first three search formats on the largest architecture
    "fliqs_int": CONFIGS / "fliqs_int.yaml",
    "fliqs_fp": CONFIGS / "fliqs_fp.yaml",
    "fliqs_mixed": CONFIGS / "fliqs_mixed.yaml",
    "fliqnas_mixed": CONFIGS / "fliqnas_mixed.yaml",
}
SETTINGS = {  # label -> (menus of VARIANTS, FLIQS options beside the study's)
    **{label: (label, {}) for label in VARIANTS},
    "fliqs_mixed_entropy_to_0": ("fliqs_mixed", {"entropy_weight": (0.05, 0.0)}),
    "fliqs_mixed_beta_0.25": ("fliqs_mixed", {"beta": 0.25}),
    "fliqs_mixed_scratch": ("fliqs_mixed", {"init": "scratch"}),
}
SWEEP = ("fliqs_mixed_entropy_to_0", "fliqs_mixed_beta_0.25")
SCRATCH = "fliqs_mixed_scratch"
SCRATCH_UNIFORM = ("int8", "int4")  # trained from scratch the way the paper's setting trains its weights
UNIFORM = ("int8", "int4", "fp8_e4m3", "fp4_e2m1")
COST_TOLERANCE = 1.02  # "equal cost": at most 2 % more BitOps than the baseline


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="spaces/mbv2_fmnist.yaml")
    parser.add_argument("--supernet", type=Path, default=Path("runs/fliqs_supernet"),
                        help="training run folder; trained there first when it holds no supernet.pt")
    parser.add_argument("--supernet-epochs", type=int, default=2)
    parser.add_argument("--supernet-subset", type=int, default=8000, help="training images of the supernet")
    parser.add_argument("--steps", type=int, default=300, help="FLIQS training steps per run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--weight-lr", type=float, default=0.02)
    parser.add_argument("--policy-lr", type=float, default=0.1)
    parser.add_argument("--compare", type=Path, nargs="*", default=[],
                        help="other search directories scored by the same supernet (e.g. a Ray/Optuna run)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------ running
def shared_estimator(space: SearchSpace, run_dir: Path, args: argparse.Namespace) -> OneShotEstimator:
    """The one-shot estimator every candidate of the study is scored by (training the supernet if needed)."""
    if not (run_dir / SUPERNET).is_file():
        train_supernet(space, run_dir, epochs=args.supernet_epochs, train_subset=args.supernet_subset, seed=args.seed)
    return OneShotEstimator(space, load_supernet(run_dir, space), load_space_data(space))


def run_uniform(space: SearchSpace, estimator: OneShotEstimator, out: Path) -> list[Trial]:
    """The uniform baselines on the largest architecture, recorded as the ``uniform`` strategy records them."""
    log = SearchLog(out, space, strategy="uniform", options={"formats": list(UNIFORM)})
    for number, fmt in enumerate(UNIFORM):
        candidate = space.uniform(fmt, fmt, clamp=True)
        clamped = [name for name, w, a in candidate.formats if (w, a) != (fmt, fmt)]
        info = {"format": f"{fmt}/{fmt}", "w_fmt": fmt, "a_fmt": fmt, "arch": "largest", "clamped_layers": clamped}
        log.append(evaluate_candidate(number, candidate, estimator, strategy="uniform", info=info))
    log.finish()
    return log.trials


def run_variant(label: str, estimator: OneShotEstimator, targets: list[float], out: Path,
                args: argparse.Namespace) -> list[Trial]:
    """One FLIQS run per target with the setting's menus and options; the search directory holds the policy log."""
    menus, extra = SETTINGS[label]
    return run_fliqs(label, SearchSpace.from_file(VARIANTS[menus]), extra, estimator, targets, out, args)


def run_scratch_uniform(fmt: str, estimator: OneShotEstimator, target: float, out: Path,
                        args: argparse.Namespace) -> list[Trial]:
    """Uniform ``fmt`` trained from scratch as the paper's setting trains its weights: a FLIQS run with
    ``init: scratch`` on the one-candidate space of the mixed menus reduced to ``fmt`` (nothing to decide)."""
    settings = yaml.safe_load(VARIANTS["fliqs_mixed"].read_text(encoding="utf-8"))
    kept = [rule for rule in settings["formats"]["overrides"] if "conv_dw" not in rule["layers"]]
    depthwise = {"layers": r"blocks\.\d+\.\d+\.conv_dw", "weights": ["int8" if fmt.startswith("int") else fmt]}
    settings.update(name=f"uniform_{fmt}_scratch", formats={"weights": [fmt], "activations": [fmt],
                                                            "overrides": [*kept, depthwise]})
    space = SearchSpace.from_dict(settings, source=f"<{settings['name']}>")
    return run_fliqs(settings["name"], space, {"init": "scratch"}, estimator, [target], out, args)


def run_fliqs(label: str, space: SearchSpace, extra: dict[str, Any], estimator: OneShotEstimator,
              targets: list[float], out: Path, args: argparse.Namespace) -> list[Trial]:
    options = {"targets": targets, "steps": args.steps, "batch_size": args.batch_size, "weight_lr": args.weight_lr,
               "policy_lr": args.policy_lr, "log_every": 15, **extra}
    log = SearchLog(out, space, strategy="fliqs", options={**options, "label": label, "seed": args.seed})
    log.run_info["label"] = label
    for trial in FLIQS(out_dir=out, progress=True, **options).run(space, estimator, Budget(len(targets)),
                                                                    seed=args.seed):
        log.append(trial)
    log.finish()
    return log.trials


def reuse_or_run(out: Path, run: Callable[[], list[Trial]]) -> tuple[list[Trial], float]:
    """The trials and wall seconds of the finished search directory ``out`` if there is one (delete it to run
    again), else of ``run()``, which writes it."""
    result = load_search_dir(out)
    if result.run.get("status") != "finished":
        run()
        result = load_search_dir(out)
    return result.trials, float(result.run["wall_s"])


def supernet_minutes(run_dir: Path) -> float:
    return sum(e["wall_s"] for e in read_jsonl(run_dir / TRAIN_METRICS)) / 60


def supernet_record(run_dir: Path) -> str:
    """How the shared supernet was trained, from its run folder's per-epoch metrics."""
    epochs = list(read_jsonl(run_dir / TRAIN_METRICS))
    config = json.loads((run_dir / "run.json").read_text())["config"]["training"]
    last = epochs[-1]
    return (f"{len(epochs)} epochs on {config['train_size']} images in {sum(e['wall_s'] for e in epochs) / 60:.1f} "
            f"min, validation accuracy largest {last['val_acc_largest']:.4f} / smallest {last['val_acc_smallest']:.4f}")


# ------------------------------------------------------------------------------------------------ verdicts
def standard_error(accuracy: float, images: int) -> float:
    return math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / images)


Paired = Callable[[Trial, Trial], Difference]


def verdict(difference: float, noise: float, bitops_ratio: float) -> str:
    """``held`` beyond ``noise`` (two standard errors of the difference), ``did not hold`` below minus it."""
    if bitops_ratio > COST_TOLERANCE:
        return "not at equal cost"
    if difference > noise:
        return "held"
    if -difference > noise:
        return "did not hold"
    return "inconclusive (within noise)"


def compare(better: Trial, baseline: Trial, paired: Paired) -> dict[str, Any]:
    """Whether ``better`` beats ``baseline`` at equal cost on the shared estimator, paired on the same validation
    images: a difference within two paired standard errors is noise."""
    difference = paired(better, baseline)
    ratio = better.metrics["bitops"] / baseline.metrics["bitops"]
    return {"accuracy": better.metrics["accuracy"], "baseline_accuracy": baseline.metrics["accuracy"],
            "difference": difference.value, "noise_2se": 2 * difference.se, "bitops_ratio": ratio,
            "verdict": verdict(difference.value, 2 * difference.se, ratio)}


def compare_in_place(better: Trial, baseline: Trial, images: int) -> dict[str, Any]:
    """:func:`compare` on the accuracies of the runs' own weights (``info.in_place``): two separate trainings, so
    the noise is that of two independent binomial estimates."""
    acc, base = better.info["in_place"]["accuracy"], baseline.info["in_place"]["accuracy"]
    noise = 2 * math.hypot(standard_error(acc, images), standard_error(base, images))
    ratio = better.metrics["bitops"] / baseline.metrics["bitops"]
    return {"accuracy": acc, "baseline_accuracy": base, "difference": acc - base, "noise_2se": noise,
            "bitops_ratio": ratio, "verdict": verdict(acc - base, noise, ratio)}


def by_target(trials: list[Trial]) -> dict[float, Trial]:
    return {t.info["target"]["bitops"]: t for t in trials if t.feasible}


def claims(uniform: list[Trial], runs: dict[str, list[Trial]], scratch_uniform: dict[str, list[Trial]],
           paired: Paired, images: int) -> dict[str, list[dict[str, Any]]]:
    """Claim 1 at each uniform cost level (vs the best uniform format there); claim 2, the sweep and the paper's
    setting at each target."""
    mixed = by_target(runs["fliqs_mixed"])
    levels: dict[float, list[Trial]] = {}
    for trial in uniform:
        levels.setdefault(trial.metrics["bitops"], []).append(trial)
    first = []
    for level, trials in sorted(levels.items()):
        best = max(trials, key=lambda t: t.metrics["accuracy"])
        if level in mixed:
            first.append({"bitops": level, "best_uniform": best.info["format"], **compare(mixed[level], best, paired)})
    second = [{"target": target, **compare(joint, mixed[target], paired)}
              for target, joint in sorted(by_target(runs["fliqnas_mixed"]).items()) if target in mixed]
    sweep = [{"setting": label, "target": target, "cost_ratio": trial.info["cost_ratio"],
              "final_entropy": trial.info["final_entropy"], "default_cost_ratio": mixed[target].info["cost_ratio"],
              "default_final_entropy": mixed[target].info["final_entropy"], **compare(trial, mixed[target], paired)}
             for label in SWEEP for target, trial in sorted(by_target(runs[label]).items()) if target in mixed]
    scratch = by_target(runs[SCRATCH])
    paper = [{"uniform": fmt, "target": target, **compare_in_place(scratch[target], baseline, images)}
             for fmt, trials in scratch_uniform.items() for target, baseline in by_target(trials).items()
             if target in scratch]
    return {"mixed_vs_uniform": first, "joint_vs_formats_only": second, "entropy_and_beta": sweep,
            "scratch_vs_uniform_scratch": paper}


# ------------------------------------------------------------------------------------------------ reporting
def format_mix(trial: Trial) -> str:
    """Counts of the weight and activation formats of the searched layers, e.g. ``W fp8 3, int4 12; A ...``."""
    layers = [f for f in trial.candidate.formats if f[0] not in ("conv_stem", "classifier")]
    counts = [Counter(f[position].split("_")[0] for f in layers) for position in (1, 2)]
    return "; ".join(f"{side} " + ", ".join(f"{name} {n}" for name, n in sorted(count.items()))
                      for side, count in zip("WA", counts))


def summary_markdown(uniform: list[Trial], runs: dict[str, list[Trial]], scratch_uniform: dict[str, list[Trial]],
                     verdicts: dict[str, Any], setup: dict[str, Any]) -> str:
    lines = ["# FLIQS study: int, fp and mixed format search, FLIQNAS, the schedule and the paper's setting", "",
             f"- command: `{setup['command']}`", f"- machine: {machine_text(setup['machine'])}; {setup['date']}",
             f"- wall time: {setup['wall']}", "", f"Scale: {setup['scale']}", "",
             "| run | target BitOps | BitOps | accuracy (shared estimator) | accuracy (FLIQS weights, no retraining) "
             "| final entropy | formats | depths | width |", "|---|---|---|---|---|---|---|---|---|"]
    for trial in uniform:
        lines.append(f"| uniform {trial.info['format']} | - | {trial.metrics['bitops']:.4g} | "
                     f"{trial.metrics['accuracy']:.4f} | - | - | {format_mix(trial)} | "
                     f"{trial.candidate.depths} | {trial.candidate.width_mult} |")
    for label, trials in {**runs, **{f"uniform {fmt} from scratch": t for fmt, t in scratch_uniform.items()}}.items():
        for trial in trials:
            lines.append(f"| {label} | {trial.info['target']['bitops']:.4g} | {trial.metrics.get('bitops', 0):.4g} | "
                         f"{trial.metrics.get('accuracy', float('nan')):.4f} | "
                         f"{trial.info['in_place']['accuracy']:.4f} | {trial.info['final_entropy']:.3f} | "
                         f"{format_mix(trial)} | {trial.candidate.depths} | {trial.candidate.width_mult} |")

    def difference(v: dict[str, Any]) -> str:
        return (f"difference {v['difference']:+.4f} (noise ±{v['noise_2se']:.4f}), BitOps ratio "
                f"{v['bitops_ratio']:.3f}: **{v['verdict']}**")

    lines += ["", "## Claim 1: mixed int+fp search beats the best uniform format at equal BitOps", "",
              "Shared estimator; noise is two paired standard errors (the same validation images).", ""]
    lines += [f"* {v['bitops']:.4g} BitOps: FLIQS mixed {v['accuracy']:.4f} vs best uniform ({v['best_uniform']}) "
              f"{v['baseline_accuracy']:.4f}, {difference(v)}" for v in verdicts["mixed_vs_uniform"]]
    lines += ["", "## Claim 2: joint architecture + format search beats format-only search", ""]
    lines += [f"* target {v['target']:.4g}: FLIQNAS {v['accuracy']:.4f} vs formats only {v['baseline_accuracy']:.4f}, "
              f"{difference(v)}" for v in verdicts["joint_vs_formats_only"]]
    lines += ["", "## The entropy schedule and beta, against the default (0.05 -> -0.3, beta 1) on the mixed menus", "",
              "'held': the setting's candidate is more accurate than the default's at the same target (shared "
              "estimator, paired).", ""]
    lines += [f"* {v['setting']} at {v['target']:.4g}: {v['accuracy']:.4f} vs default {v['baseline_accuracy']:.4f}, "
              f"{difference(v)}; cost / target {v['cost_ratio']:.3f} (default {v['default_cost_ratio']:.3f}), final "
              f"entropy {v['final_entropy']:.3f} (default {v['default_final_entropy']:.3f})"
              for v in verdicts["entropy_and_beta"]]
    lines += ["", "## The paper's setting: from scratch, the final candidate with its own weights", "",
              "FLIQS with `init: scratch` on the mixed menus against uniform formats trained from scratch by the same "
              "steps, batches and schedule; accuracies with each run's own weights (independent trainings: noise from "
              "two binomial standard errors).", ""]
    lines += [f"* target {v['target']:.4g}: FLIQS from scratch {v['accuracy']:.4f} vs uniform {v['uniform']} from "
              f"scratch {v['baseline_accuracy']:.4f}, {difference(v)}" for v in verdicts["scratch_vs_uniform_scratch"]]
    lines += ["", "## Notes", ""] + [f"* {note}" for note in setup["notes"]]
    return "\n".join(lines) + "\n"


def front_figure(uniform: list[Trial], runs: dict[str, list[Trial]], others: dict[str, list[Trial]]) -> bytes:
    """Accuracy against BitOps: the shared estimator's scores (filled) and the in-place ones (hollow)."""
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    colors = plots.run_colors([*runs, *others])
    for label, trials in {**runs, **others}.items():
        done = sorted((t for t in trials if t.feasible), key=lambda t: t.metrics["bitops"])
        x = [t.metrics["bitops"] for t in done]
        ax.plot(x, [t.metrics["accuracy"] for t in done], "o-", color=colors[label], label=label)
        if label in runs:
            ax.plot(x, [t.info["in_place"]["accuracy"] for t in done], "o--", color=colors[label],
                    markerfacecolor="none", label=f"{label} (no retraining)")
    for trial in uniform:
        ax.plot(trial.metrics["bitops"], trial.metrics["accuracy"], "s", color=plots.BASELINE_COLOR)
        ax.annotate(trial.info["format"].split("/")[0], (trial.metrics["bitops"], trial.metrics["accuracy"]),
                    textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("BitOps")
    ax.set_ylabel("Top-1 accuracy (validation)")
    ax.set_title("FLIQS fronts against uniform formats (black squares)")
    ax.legend(fontsize=7, loc="lower right")
    return plots.to_png(fig)


def policy_figure(logs: dict[str, list[dict[str, Any]]], detail: str) -> bytes:
    """Left: mean normalised entropy of every run over the steps. Right: every decision of one run."""
    fig = Figure(figsize=(11, 4.2))
    left, right = fig.subplots(1, 2)
    colors = plots.run_colors(list(logs))
    for label, records in logs.items():
        for target, style in zip(sorted({r["target"] for r in records}), ("-", "--", ":")):
            run = [r for r in records if r["target"] == target]
            left.plot([r["step"] for r in run], [np.mean(list(r["entropy"].values())) for r in run], style,
                      color=colors[label], label=f"{label} @ {target:.3g}")
    left.set_xlabel("step")
    left.set_ylabel("mean normalised entropy")
    left.set_title("policy entropy (warm-up: frozen at 1)")
    left.legend(fontsize=6)
    records = logs[detail]
    targets = sorted({r["target"] for r in records})
    run = [r for r in records if r["target"] == targets[len(targets) // 2]]
    kinds = {"w_fmt": "tab:blue", "a_fmt": "tab:orange"}
    for name in run[0]["entropy"]:
        kind = name.rsplit(".", 1)[-1]
        right.plot([r["step"] for r in run], [r["entropy"][name] for r in run], lw=0.7, alpha=0.6,
                   color=kinds.get(kind, "tab:green"))
    right.set_xlabel("step")
    right.set_ylabel("normalised entropy per decision")
    right.set_title(f"{detail} @ {run[0]['target']:.3g}: w_fmt blue, a_fmt orange, architecture green", fontsize=9)
    return plots.to_png(fig)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    space = SearchSpace.from_file(args.space)
    estimator = shared_estimator(space, args.supernet, args)
    cost = CostModel(space)
    low, high = (cost.metrics(space.uniform(f, f, clamp=True))["bitops"] for f in ("int4", "int8"))
    targets = [low, (low + high) / 2, high]
    runs_dir = args.out / "fliqs_runs"
    uniform, wall = reuse_or_run(runs_dir / "uniform", lambda: run_uniform(space, estimator, runs_dir / "uniform"))
    runs = {}
    for label in SETTINGS:
        out = runs_dir / label
        runs[label], seconds = reuse_or_run(out, lambda: run_variant(label, estimator, targets, out, args))
        wall += seconds
    scratch_uniform = {}
    for fmt, target in zip(SCRATCH_UNIFORM, (high, low)):
        out = runs_dir / f"uniform_{fmt}_scratch"
        scratch_uniform[fmt], seconds = reuse_or_run(
            out, lambda: run_scratch_uniform(fmt, estimator, target, out, args))
        wall += seconds
    others = {load_search_dir(path).strategy: load_search_dir(path).trials for path in args.compare}
    images = sum(len(labels) for _, labels in estimator.val)
    verdicts = claims(uniform, runs, scratch_uniform,
                      lambda a, b: estimator.paired_difference(a.candidate, b.candidate), images)
    setup = {
        "command": shlex.join(["PYTHONPATH=.", f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
                               ".venv/bin/python", *sys.argv]),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall": (f"FLIQS runs and baselines {wall / 60:.1f} min (their own timings, reused runs included), this "
                 f"invocation {(time.perf_counter() - started) / 60:.1f} min, supernet training "
                 f"{supernet_minutes(args.supernet):.1f} min"),
        "scale": (f"shared supernet {args.supernet}: {supernet_record(args.supernet)}. FLIQS {args.steps} steps per "
                  f"run (25 % warm-up), batch {args.batch_size}, weight lr {args.weight_lr}, policy lr "
                  f"{args.policy_lr}; {len(SETTINGS)} settings x {len(targets)} targets and {len(SCRATCH_UNIFORM)} "
                  f"uniform formats from scratch; accuracies on {images} validation images"),
        "notes": [
            "fliqs_fp cannot go below 1.02e8 BitOps: FP8 is the only floating-point activation format of "
            "mbv2_fmnist, so its cheapest candidate is W fp4 / A fp8; the uniform 'fp4_e2m1' baseline uses int4 "
            "activations (SearchSpace.uniform with clamp=True picks the nearest format of each menu).",
            "Depthwise layers keep 8-bit weights and conv_stem/classifier int8 in every candidate (the space's "
            "overrides), uniform baselines included.",
            "'No retraining' accuracies of the runs that start from the shared supernet use weights trained for "
            "--steps more steps than the shared supernet; compare those runs on the shared-estimator column. The "
            "runs from scratch (the paper's setting and its uniform baselines) are compared on their own weights.",
            "Ray/Optuna one-shot search: " + (", ".join(others) if others else
                                               "no search directory was given (--compare), so it is not compared."),
        ],
    }
    atomic_write_json(args.out / "fliqs_summary.json", {
        "setup": setup, "targets": targets, "claims": verdicts,
        "uniform": [t.to_dict() for t in uniform], "runs": {k: [t.to_dict() for t in v] for k, v in runs.items()},
        "uniform_from_scratch": {k: [t.to_dict() for t in v] for k, v in scratch_uniform.items()}})
    atomic_write_text(args.out / "fliqs_summary.md", summary_markdown(uniform, runs, scratch_uniform, verdicts, setup))
    (args.out / "fliqs_front.png").write_bytes(front_figure(uniform, runs, others))
    logs = {label: list(read_jsonl(runs_dir / label / POLICY_LOG)) for label in SETTINGS}
    (args.out / "fliqs_policy.png").write_bytes(policy_figure(logs, "fliqnas_mixed"))
    print(f"wrote {args.out / 'fliqs_summary.md'}")


if __name__ == "__main__":
    main()
