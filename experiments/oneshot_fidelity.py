"""Fidelity of the one-shot estimator: does the supernet rank candidates like stand-alone training does?

Samples candidates of ``spaces/mbv2_fmnist.yaml`` stratified by BitOps (many random samples, binned by
log BitOps, one per bin) plus the uniform int8/int4/fp8 points of the largest architecture, scores each with
the one-shot estimator (shared weights, BN recalibrated) and with stand-alone training (the same recipe for
every candidate), and reports Kendall tau, Spearman and Pearson between the two. A few candidates are also
trained with extra seeds to measure the noise floor of the stand-alone accuracy, i.e. the best rank
correlation the data allow. Target (One-Shot MPQ, CVPR 2023): Kendall tau >= 0.93; at least Spearman >= 0.9.

Outputs under ``--out`` (rewritten atomically after every candidate, so a stopped run leaves partial results):
``oneshot_fidelity.json``, ``oneshot_fidelity.png`` (scatter), ``oneshot_fidelity.md``.

    PYTHONPATH=. .venv/bin/python experiments/oneshot_fidelity.py --scale small --supernet /tmp/h4/fmnist_run
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy import stats

from automq.candidate import Candidate
from automq.evaluate import OneShotEstimator, train_standalone
from automq.io import atomic_write_json, atomic_write_text
from automq.space import SearchSpace
from automq.supernet import recalibrate_bn
from automq.train import SUPERNET, load_space_data, load_supernet, train_supernet

ROOT = Path(__file__).resolve().parent
UNIFORM = ("int8", "int4", "fp8_e4m3")
NAME = "oneshot_fidelity"
TARGET_TAU, TARGET_SPEARMAN = 0.93, 0.9


@dataclass(frozen=True)
class Scale:
    """How much work one run does: ``small`` fits a loaded 2-core CPU in ~15 min, ``full`` is for a GPU."""

    candidates: int  # stratified random candidates (the uniform points come on top)
    pool: int  # random samples the strata are drawn from
    train_images: int  # stand-alone fine-tuning images (class-balanced subset of the train split)
    epochs: int  # stand-alone fine-tuning epochs
    val_images: int  # validation images, the same for both scores
    calib_images: int  # BN recalibration images of the one-shot estimate
    noise_candidates: int  # candidates retrained with extra seeds
    noise_seeds: int  # seeds per noise candidate (including the main seed 0)
    supernet_epochs: int  # only when no trained supernet is given
    supernet_images: int


SCALES = {
    "small": Scale(candidates=20, pool=400, train_images=3000, epochs=1, val_images=5000, calib_images=512,
                   noise_candidates=3, noise_seeds=3, supernet_epochs=3, supernet_images=20000),
    "full": Scale(candidates=50, pool=5000, train_images=55000, epochs=5, val_images=5000, calib_images=2048,
                  noise_candidates=5, noise_seeds=3, supernet_epochs=30, supernet_images=55000),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--space", default="spaces/mbv2_fmnist.yaml")
    parser.add_argument("--supernet", help="a training run folder holding supernet.pt for --space "
                        "(default: train one into <out>/supernet)")
    parser.add_argument("--data", help="dataset root (default: the space's)")
    parser.add_argument("--init", choices=("supernet", "scratch"), default="supernet",
                        help="stand-alone start: fine-tune the extracted supernet weights, or train from scratch")
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("--seed", type=int, default=0, help="candidate sampling seed")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def stratified_candidates(space: SearchSpace, bitops: Any, count: int, pool: int, seed: int) -> list[Candidate]:
    """``count`` distinct candidates spread evenly over log BitOps: ``pool`` random samples cut into
    ``count`` equal-width log-BitOps bins, the sample nearest each bin centre; empty bins are made up from
    the samples farthest (in log BitOps) from those already chosen."""
    rng = np.random.default_rng(seed)
    samples = list({c.id: c for c in (space.sample(rng) for _ in range(pool))}.values())
    logs = np.log10([bitops(c) for c in samples])
    edges = np.linspace(logs.min(), logs.max(), count + 1)
    chosen: list[int] = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = np.flatnonzero((logs >= lo) & (logs <= hi))
        inside = inside[~np.isin(inside, chosen)]
        if inside.size:
            chosen.append(int(inside[np.argmin(np.abs(logs[inside] - (lo + hi) / 2))]))
    while len(chosen) < min(count, len(samples)):
        gaps = np.min(np.abs(logs[:, None] - logs[chosen][None, :]), axis=1)
        gaps[chosen] = -1
        chosen.append(int(np.argmax(gaps)))
    return [samples[i] for i in sorted(chosen, key=lambda i: logs[i])]


def correlations(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Kendall tau (b), Spearman rho and Pearson r of two paired score lists (NaN below 3 pairs)."""
    if len(x) < 3:
        return {"kendall_tau": math.nan, "spearman": math.nan, "pearson": math.nan}
    return {"kendall_tau": float(stats.kendalltau(x, y).statistic),
            "spearman": float(stats.spearmanr(x, y).statistic),
            "pearson": float(stats.pearsonr(x, y).statistic)}


def noise_floor(rows: list[dict[str, Any]], val_images: int, sims: int = 2000) -> dict[str, Any]:
    """The noise of stand-alone accuracy from the seed repeats, and the Kendall tau two independent
    stand-alone runs of the whole candidate set would reach given it (simulated): no estimator can rank
    better than the ground truth agrees with itself. Also the binomial standard error of an accuracy
    measured on ``val_images`` images, the sampling noise of the validation subset itself."""
    repeats = [r["seed_accuracies"] for r in rows if len(r.get("seed_accuracies", [])) > 1]
    if not repeats:
        return {}
    sigma = float(np.sqrt(np.mean([np.var(a, ddof=1) for a in repeats])))
    accs = np.array([r["standalone_accuracy"] for r in rows if r.get("standalone_accuracy") is not None])
    rng = np.random.default_rng(0)
    taus = [stats.kendalltau(accs + rng.normal(0, sigma, accs.size), accs + rng.normal(0, sigma, accs.size)).statistic
            for _ in range(sims)] if accs.size >= 3 else []
    first, second = zip(*[(a[0], a[1]) for a in repeats])
    p = float(accs.mean()) if accs.size else math.nan
    return {"seed_std": sigma, "val_standard_error": math.sqrt(p * (1 - p) / val_images),
            "standalone_spread_std": float(accs.std(ddof=1)) if accs.size > 1 else math.nan,
            "expected_seed_to_seed_tau": float(np.mean(taus)) if taus else math.nan,
            "seed1_vs_seed2_tau": correlations(first, second)["kendall_tau"],
            "candidates": [{"id": r["id"], "accuracies": r["seed_accuracies"]} for r in rows if "seed_accuracies" in r
                           and len(r["seed_accuracies"]) > 1]}


def noise_indices(n: int, k: int) -> list[int]:
    """``k`` indices spread over ``0..n-1`` (rows are sorted by BitOps: low, middle and high cost)."""
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)}) if n else []


def plot(rows: list[dict[str, Any]], figures: dict[str, float], path: Path) -> None:
    done = [r for r in rows if r.get("standalone_accuracy") is not None]
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    points = ax.scatter([r["oneshot_accuracy"] for r in done], [r["standalone_accuracy"] for r in done],
                        c=np.log10([r["bitops"] for r in done]), cmap="viridis")
    for r in done:
        if r["label"] != "random":
            ax.annotate(r["label"], (r["oneshot_accuracy"], r["standalone_accuracy"]), fontsize=8,
                        textcoords="offset points", xytext=(-5, 4), ha="right")
    fig.colorbar(points, ax=ax, label="log10 BitOps")
    ax.set_xlabel("one-shot accuracy (shared weights, BN recalibrated)")
    ax.set_ylabel("stand-alone accuracy")
    ax.set_title(f"n={len(done)}  tau={figures['kendall_tau']:.3f}  rho={figures['spearman']:.3f}  "
                 f"r={figures['pearson']:.3f}", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(result: dict[str, Any]) -> str:
    s, nf = result["scale"], result["noise_floor"]
    done = [r for r in result["candidates"] if r.get("standalone_accuracy") is not None]
    tau, rho = result["kendall_tau"], result["spearman"]
    verdict = ("MEETS the target" if tau >= TARGET_TAU else
               "misses tau >= 0.93 but meets Spearman >= 0.9" if rho >= TARGET_SPEARMAN else "MISSES the target")
    lines = [
        "# One-shot estimator fidelity", "",
        f"`{result['command']}`", "",
        f"- status: {result['status']}; {len(done)} of {len(result['candidates'])} candidates scored both ways; "
        f"wall time {result['wall_s'] / 60:.1f} min; 1-min load average {result['load_start']:.1f} at the start "
        f"on {os.cpu_count()} CPUs",
        f"- supernet: {result['supernet']}; space `{result['space']}`",
        f"- scale `{result['scale_name']}` (SMALL: a CPU-budget study, not a publication-grade one): "
        f"{s['candidates']} BitOps-stratified candidates + uniform {', '.join(UNIFORM)} (largest architecture); "
        f"one-shot = BN recalibration on {s['calib_images']} train images, accuracy on {s['val_images']} val images; "
        f"stand-alone = init `{result['init']}`, {s['epochs']} epoch(s) on {s['train_images']} train images, "
        f"the space's SGD recipe, scored on the same {s['val_images']} val images",
        "",
        f"| Kendall tau | Spearman | Pearson | target |", "|---:|---:|---:|---|",
        f"| {tau:.3f} | {rho:.3f} | {result['pearson']:.3f} | tau >= {TARGET_TAU} (One-Shot MPQ), "
        f"at least Spearman >= {TARGET_SPEARMAN}: **{verdict}** |", "",
    ]
    if nf:
        lines += ["## Noise floor of the stand-alone accuracy", "",
                  f"- {len(nf['candidates'])} candidates trained with {s['noise_seeds']} seeds: seed std of accuracy "
                  f"{nf['seed_std']:.4f} against a spread (std over candidates) of {nf['standalone_spread_std']:.4f}; "
                  f"binomial standard error of an accuracy on {s['val_images']} val images: "
                  f"{nf['val_standard_error']:.4f}",
                  f"- Kendall tau between two independent stand-alone runs of this candidate set, simulated from "
                  f"that noise: {nf['expected_seed_to_seed_tau']:.3f} (the best tau these data allow); "
                  f"seed-1 vs seed-2 tau on the repeated candidates: {nf['seed1_vs_seed2_tau']:.3f}",
                  "- with init `supernet` a seed only changes the order of the training images; both scores use the "
                  "same validation images, so their sampling error is shared and is not part of this ceiling", ""]
    lines += ["## Candidates", "", "| id | label | BitOps | one-shot acc | stand-alone acc |",
              "|---|---|---:|---:|---:|"]
    lines += [f"| `{r['id'][:12]}` | {r['label']} | {r['bitops']:.3e} | {r['oneshot_accuracy']:.4f} | "
              f"{'-' if r.get('standalone_accuracy') is None else format(r['standalone_accuracy'], '.4f')} |"
              for r in result["candidates"]]
    lines += ["", "## Reading", "", result["reading"], ""]
    return "\n".join(lines)


def reading(result: dict[str, Any]) -> str:
    """A plain-words interpretation of the figures, for the md."""
    tau, nf = result["kendall_tau"], result["noise_floor"]
    text = [f"At this small scale the one-shot ranking agrees with stand-alone ranking at Kendall tau {tau:.3f} "
            f"over all candidates, and at {result['kendall_tau_random_only']:.3f} among the random samples alone: "
            "they span a narrow accuracy band, so their order is decided by differences comparable to the noise "
            "below, while the uniform points of the largest architecture stand apart."]
    if nf and not math.isnan(nf.get("expected_seed_to_seed_tau", math.nan)):
        ceiling = nf["expected_seed_to_seed_tau"]
        text.append(f"The stand-alone ground truth itself only agrees with a re-run at tau ~{ceiling:.2f}, so "
                    + (f"the estimator is {ceiling - tau:.2f} below that ceiling and the target of 0.93 cannot be "
                       "reached at this scale whatever the estimator: the ground truth is too noisy."
                       if ceiling < TARGET_TAU else f"the estimator is {ceiling - tau:.2f} below that ceiling."))
    if tau < TARGET_TAU:
        text.append("Why it falls short and what would help: the stand-alone scores are short fine-tunes from "
                    "supernet weights on a few thousand images (noisy, and biased toward the supernet's own "
                    "ranking when init=supernet), the supernet was trained for few epochs on a subset, and one "
                    "BN statistics set is shared by all formats. Longer stand-alone training (scratch, full "
                    "train split, several seeds), a longer-trained supernet with in-place distillation, "
                    "per-format BN, and longer BN calibration would each raise the achievable tau; run "
                    "`--scale full` on a GPU.")
    return " ".join(text)


def summarize(rows: list[dict[str, Any]], meta: dict[str, Any], wall_s: float, out: Path,
              status: str) -> dict[str, Any]:
    """Recompute the figures from the rows so far and rewrite the three outputs atomically."""
    done = [r for r in rows if r.get("standalone_accuracy") is not None]
    figures = correlations([r["oneshot_accuracy"] for r in done], [r["standalone_accuracy"] for r in done])
    sampled = [r for r in done if r["label"] == "random"]
    within = correlations([r["oneshot_accuracy"] for r in sampled], [r["standalone_accuracy"] for r in sampled])
    result = {"candidates": rows, **figures, "kendall_tau_random_only": within["kendall_tau"],
              "noise_floor": noise_floor(rows, meta["scale"]["val_images"]), **meta, "status": status, "wall_s": wall_s}
    result["reading"] = reading(result)
    atomic_write_json(out / f"{NAME}.json", result)
    if len(done) >= 1:
        plot(rows, figures, out / f"{NAME}.png")
    atomic_write_text(out / f"{NAME}.md", markdown(result))
    return result


def supernet_run(args: argparse.Namespace, space: SearchSpace, scale: Scale, out: Path) -> Path:
    """The given supernet run folder, or a new one trained into ``out/supernet`` (resumed if started)."""
    if args.supernet:
        return Path(args.supernet)
    run = out / "supernet"
    if not (run / SUPERNET).exists():
        train_supernet(space, run, epochs=scale.supernet_epochs, train_subset=scale.supernet_images,
                       data_root=args.data, resume=(run / "checkpoint.pt").exists())
    return run


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    scale, out, start = SCALES[args.scale], Path(args.out), time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    space = SearchSpace.from_file(args.space)
    run = supernet_run(args, space, scale, out)
    supernet = load_supernet(run, space)
    data = load_space_data(space, root=args.data, train_subset=scale.train_images)
    estimator = OneShotEstimator(space, supernet, data, calib_images=scale.calib_images, val_images=scale.val_images)
    bitops = lambda c: estimator.costs(c)["bitops"]  # noqa: E731
    picked = [("random", c) for c in stratified_candidates(space, bitops, scale.candidates, scale.pool, args.seed)]
    picked += [(f"uniform {f}", space.uniform(f, f, "largest", clamp=True)) for f in UNIFORM]
    picked += [("smallest", space.smallest())]
    unique: dict[str, tuple[str, Candidate]] = {}
    for label, candidate in picked:  # smallest() may equal a sample: keep the first label
        unique.setdefault(candidate.id, (label, candidate))
    picked = list(unique.values())
    meta = {"command": shlex.join([sys.executable, *sys.argv]), "scale_name": args.scale, "scale": asdict(scale),
            "init": args.init, "supernet": str(run), "space": args.space, "load_start": os.getloadavg()[0],
            "threads": args.threads}
    rows = [{"id": c.id, "label": label, "bitops": bitops(c),
             "oneshot_accuracy": estimator.estimate(c)["accuracy"], "standalone_accuracy": None}
            for label, c in picked]
    summarize(rows, meta, time.perf_counter() - start, out, "running")
    noisy = set(noise_indices(scale.candidates, scale.noise_candidates))
    for i, (row, (_, candidate)) in enumerate(zip(rows, picked)):
        # the extracted start must carry this candidate's BN statistics, not the last estimated one's
        supernet.set_active(candidate)
        recalibrate_bn(supernet, estimator.calib)
        seeds = range(scale.noise_seeds if i in noisy else 1)
        accs = [train_standalone(space, candidate, data, epochs=scale.epochs, seed=seed, init=args.init,
                                 supernet=supernet, val_images=scale.val_images)["accuracy"] for seed in seeds]
        row["standalone_accuracy"] = accs[0]  # seed 0: the same recipe for every candidate
        if len(accs) > 1:
            row["seed_accuracies"] = accs
        print(f"[{i + 1}/{len(rows)}] {row['label']:>14} bitops={row['bitops']:.3e} "
              f"oneshot={row['oneshot_accuracy']:.4f} standalone={accs}", flush=True)
        summarize(rows, meta, time.perf_counter() - start, out, "running")
    result = summarize(rows, meta, time.perf_counter() - start, out, "complete")
    print(f"kendall_tau={result['kendall_tau']:.3f} spearman={result['spearman']:.3f} pearson={result['pearson']:.3f}")
    return result


if __name__ == "__main__":
    main()
