"""Estimator variants against a finished fidelity study's stand-alone scores (``oneshot_fidelity.py
--reuse-standalone``): only the one-shot side is re-scored, so settings are compared on the same ground truth."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from automq.space.candidate import Candidate
from automq.oneshot.evaluate import OneShotEstimator
from automq.io import atomic_write_json, atomic_write_text
from automq.space.space import SearchSpace
from automq.oneshot.train import load_space_data, load_supernet
from fidelity_stats import TARGET_TAU, correlations, fmt_ci, load_study, rank_figures, scores_by_id
from provenance import machine, machine_text

# one-shot estimator settings re-scored by --reuse-standalone: OneShotEstimator keyword arguments that replace the
# reused study's own settings (its calib_images and val_images, calibration batch 256, no fine-tuning), which are
# the baseline
VARIANTS: dict[str, dict[str, int]] = {
    "val 2000 (the search's eval_size)": {"val_images": 2000},
    "calib 2048 (batch 256)": {"calib_images": 2048},
    "calib 2048 (batch 1024)": {"calib_images": 2048, "batch_size": 1024},
    "calib 8192 (batch 1024)": {"calib_images": 8192, "batch_size": 1024},
    "fine-tune 512 images (4 steps)": {"finetune_images": 512},
    "fine-tune 1024 images (8 steps)": {"finetune_images": 1024},
}
BASELINE = "the study's (baseline)"
BY_LOSS = "the study's, ranked by one-shot loss (lower ranks higher)"


def variants(args: argparse.Namespace, space: SearchSpace, out: Path, start: float) -> dict[str, Any]:
    """Each estimator variant's rank correlation with the reused stand-alone scores, and its gain over the
    study's own estimator settings (paired bootstrap); other studies' stand-alone scores are ranked the same way."""
    load_start, source = os.getloadavg()[0], load_study(args.reuse_standalone)
    rows, recipe = source["candidates"], source["scale"]
    truth = [r["standalone_accuracy"] for r in rows]
    candidates = [Candidate.from_dict(r["candidate"]) for r in rows]
    supernet = load_supernet(args.supernet or source["supernet"], space)
    study_settings = {"calib_images": recipe["calib_images"], "val_images": recipe["val_images"], "finetune_images": 0}
    settings = {BASELINE: study_settings,
                **{name: {**study_settings, **VARIANTS[name]} for name in args.variants}}
    # class-balanced subsets are nested, so the first calibration images are the study's at any size
    calib = max(recipe["train_images"], *(s["calib_images"] for s in settings.values()))
    data = load_space_data(space, root=args.data, train_subset=calib)
    scores: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    for name, kwargs in settings.items():
        began = time.perf_counter()
        estimator = OneShotEstimator(space, supernet, data, threads=args.threads, **kwargs)
        estimates = [estimator.estimate(c) for c in candidates]
        scores[name] = [e["accuracy"] for e in estimates]
        seconds[name] = (time.perf_counter() - began) / len(candidates)
        print(f"{name}: tau={correlations(scores[name], truth)['kendall_tau']:.3f}", flush=True)
        if name == BASELINE:
            scores[BY_LOSS] = [-e["loss"] for e in estimates]
            seconds[BY_LOSS] = seconds[name]
    if scores[BASELINE] != [r["oneshot_accuracy"] for r in rows]:
        raise SystemExit(f"the study's own estimator settings do not reproduce its one-shot scores: is "
                         f"{args.supernet or source['supernet']} the supernet that {args.reuse_standalone} used?")
    for key, label, paths in (("standalone_accuracy", "stand-alone", args.compare_standalone),
                              ("oneshot_accuracy", "one-shot", args.compare_oneshot)):
        for path in paths:
            other = scores_by_id(path, key)
            if missing := [r["id"] for r in rows if r["id"] not in other]:
                raise SystemExit(f"{path}: has no {label} score for candidates {missing}")
            scores[f"{label} of {path.name}"] = [other[r["id"]] for r in rows]
    for path in args.compare_oneshot:  # studies that recorded the loss are ranked by it too
        if all(r["id"] in (loss := scores_by_id(path, "oneshot_loss")) for r in rows):
            scores[f"one-shot loss of {path.name}"] = [-loss[r["id"]] for r in rows]
    scores["BitOps alone (no network evaluated)"] = [r["bitops"] for r in rows]
    baseline = scores[BASELINE]
    random_only = [i for i, r in enumerate(rows) if r["label"] == "random"]

    def pick(values: list[float]) -> list[float]:
        return [values[i] for i in random_only]

    table = [{"variant": name, "settings": settings.get(name, {}), "s_per_candidate": seconds.get(name),
              **rank_figures(values, truth, baseline),
              "random_only": rank_figures(pick(values), pick(truth), pick(baseline))}
             for name, values in scores.items()]
    result = {"command": shlex.join([sys.executable, *sys.argv]), "ground_truth": str(args.reuse_standalone),
              "ground_truth_scale": source["scale_name"], "ground_truth_recipe": recipe,
              "supernet": args.supernet or source["supernet"], "threads": args.threads, "machine": machine(),
              "load_start": load_start,
              "load_end": os.getloadavg()[0], "wall_s": time.perf_counter() - start, "n_candidates": len(rows),
              "noise_floor": source.get("noise_floor", {}), "variants": table,
              "scores": {"ids": [r["id"] for r in rows], "standalone": truth, **scores}}
    result["reading"] = variants_reading(result)
    name = "_".join(filter(None, [args.reuse_standalone.stem, "variants", args.tag]))
    atomic_write_json(out / f"{name}.json", result)
    variants_plot(result, out / f"{name}.png")
    atomic_write_text(out / f"{name}.md", variants_markdown(result))
    return result


def variants_plot(result: dict[str, Any], path: Path) -> None:
    rows = result["variants"]
    fig = Figure(figsize=(7, 0.5 * len(rows) + 1.5))
    ax = fig.add_subplot()
    for offset, (key, label) in enumerate([(None, "all candidates"), ("random_only", "random samples only")]):
        figures = [r if key is None else r[key] for r in rows]
        y = np.arange(len(rows)) + 0.2 * (offset * 2 - 1)
        low, high = zip(*(f["kendall_tau_ci95"] for f in figures))
        taus = np.array([f["kendall_tau"] for f in figures])
        # a percentile interval of a small sample need not contain the point estimate
        errors = np.clip([taus - np.array(low), np.array(high) - taus], 0, None)
        ax.errorbar(taus, y, xerr=errors, fmt="o", capsize=3, label=label)
    ceiling = result["noise_floor"].get("ceiling_tau")
    if ceiling is not None:
        ax.axvline(ceiling, color="grey", linestyle="--", label="noise ceiling (all)")
    ax.axvline(TARGET_TAU, color="red", linestyle=":", label="target 0.93")
    ax.set_yticks(np.arange(len(rows)), [r["variant"] for r in rows], fontsize=8)
    ax.set_xlabel("Kendall tau against the stand-alone scores (95% bootstrap CI)")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def variants_markdown(result: dict[str, Any]) -> str:
    recipe = result["ground_truth_recipe"]
    base = result["variants"][0]["variant"]
    lines = [
        "# One-shot estimator variants against a fixed stand-alone ground truth", "",
        f"`{result['command']}`", "",
        f"- ground truth: the stand-alone scores of `{result['ground_truth']}` (scale `{result['ground_truth_scale']}`"
        f": {recipe['epochs']} epoch(s) on {recipe['train_images']} train images, {recipe['val_images']} val "
        f"images), {result['n_candidates']} candidates; supernet {result['supernet']}",
        f"- wall time {result['wall_s'] / 60:.1f} min on {result['threads']} torch thread; 1-min load average "
        f"{result['load_start']:.1f} at the start and {result['load_end']:.1f} at the end",
        *([f"- machine: {machine_text(result['machine'])}"] if result.get("machine") else []),
        "- validation: the study's val images unless the variant says otherwise (the first N of them); "
        "calibration: the first images of the train split",
        f"- gain: tau minus that of `{base}` on the same bootstrap resample (paired, 2000 resamples); an interval "
        "that holds 0 means no measurable difference with this many candidates", "",
        "| variant | s/candidate | tau all [95% CI] | Spearman all | gain over baseline [95% CI] | "
        "tau random only [95% CI] | Spearman random only |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["variants"]:
        low, high = r["tau_gain_ci95"]
        cost = "-" if r["s_per_candidate"] is None else f"{r['s_per_candidate']:.2f}"
        lines.append(f"| {r['variant']} | {cost} | {fmt_ci(r, 'kendall_tau')} | {r['spearman']:.3f} | "
                     f"{r['tau_gain_over_baseline']:+.3f} [{low:+.2f}, {high:+.2f}] | "
                     f"{fmt_ci(r['random_only'], 'kendall_tau')} | {r['random_only']['spearman']:.3f} |")
    nf = result["noise_floor"]
    if nf:
        lines += ["", f"Noise ceiling of this ground truth (a noise-free estimator): tau {nf['ceiling_tau']:.3f} over "
                  f"all candidates, {nf['ceiling_tau_random_only']:.3f} over the random samples."]
    lines += ["", "## Reading", "", result["reading"], ""]
    return "\n".join(lines)


def variants_reading(result: dict[str, Any]) -> str:
    rows = {r["variant"]: r for r in result["variants"]}
    base, *others = result["variants"]
    best = max(result["variants"], key=lambda r: r["kendall_tau"])
    measurable = [r["variant"] for r in others if r["tau_gain_ci95"][0] > 0 or r["tau_gain_ci95"][1] < 0]
    text = [f"Against the same ground truth the estimator settings range from tau "
            f"{min(r['kendall_tau'] for r in rows.values()):.3f} to {best['kendall_tau']:.3f} (`{best['variant']}`)."]
    text.append("Differences from the baseline that the paired bootstrap can tell from zero: "
                + (", ".join(f"`{v}` ({rows[v]['tau_gain_over_baseline']:+.3f})" for v in measurable)
                   if measurable else "none") + ".")
    text.append("Per-format BN statistics are already what the estimator computes: BN is recalibrated for each "
                "candidate with its own formats and widths active, so 'per-format BN' can only add something in "
                "the supernet (separate BN affine parameters per format during training), not in the estimator.")
    return " ".join(text)
