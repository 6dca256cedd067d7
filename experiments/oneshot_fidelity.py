"""Fidelity of the one-shot estimator: does the supernet rank candidates like stand-alone training does?

Samples candidates of ``spaces/mbv2_fmnist.yaml`` stratified by BitOps (many random samples, binned by
log BitOps, one per bin) plus the uniform int8/int4/fp8 points of the largest architecture, scores each with
the one-shot estimator (shared weights, BN recalibrated) and with stand-alone training (the same recipe for
every candidate), and reports Kendall tau, Spearman and Pearson between the two, with bootstrap intervals, for
both one-shot scores: accuracy, and cross-entropy loss (lower ranks higher).
A few candidates are also trained with extra seeds to measure the noise of the stand-alone accuracy, hence the
best rank correlation the data allow. Target (One-Shot MPQ, CVPR 2023): Kendall tau >= 0.93; at least
Spearman >= 0.9.

The scales ``study``, ``gpu`` and ``tiny`` measure what a search needs (issue 16): besides the stratified samples
and the uniform points, neighbour pairs (a sample and a partner differing in one decision: one layer's weight or
activation format, one kernel, one depth), every candidate trained alone from scratch, and whole neighbour pairs
re-trained with more seeds, so that the noise ceiling (the ground truth against a re-run of itself) is measured.
The scales ``formats`` and ``tiny_formats`` do the same on a format-only space (one architecture) against the
ground truth of the MPQ papers (``--init float``): every candidate fine-tuned quantization-aware from one float
network of that architecture, trained once into ``<out>/float_parent.pt`` apart from any supernet.
The JSON's top level holds ``kendall_tau``, ``kendall_tau_local`` (among candidates within 15% BitOps of each
other), ``neighbour_agreement`` (the share of neighbour pairs ordered right), ``noise_ceiling_tau`` and
``n_candidates``; ``search_fidelity`` has each with its bootstrap interval and its ratio to the noise ceiling, for
the one-shot accuracy and for BitOps alone.

A study writes ``oneshot_fidelity_<scale>.json`` under ``--out`` with the rows so far after every candidate, and the
figures (``.json``, ``.md``, ``.png``) when it ends, or when ``--max-minutes`` stops it; ``--resume`` continues it
without retraining a finished candidate. ``--reuse-standalone FILE`` instead re-scores only the
one-shot side of a finished study with estimator variants (calibration size and batch, validation size; the
study's own settings ranked by loss, which also serves studies written before the loss was recorded) against that
study's stand-alone scores (and, with ``--compare-oneshot``, ranks other supernets' one-shot scores of
the same candidates against them), and writes ``<FILE stem>_variants[_<tag>].{json,md,png}``.

    PYTHONPATH=. .venv/bin/python experiments/oneshot_fidelity.py --scale medium --supernet runs/fidelity_supernet
    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python experiments/oneshot_fidelity.py --scale study \\
        --supernet runs/fidelity_supernet --resume
    PYTHONPATH=. .venv/bin/python experiments/oneshot_fidelity.py --supernet runs/fidelity_supernet \\
        --reuse-standalone experiments/results/oneshot_fidelity_medium.json
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy import stats

from automq.device import resolve_device
from automq.space.candidate import Candidate
from automq.oneshot.evaluate import INITS, OneShotEstimator, torch_threads, train_float_parent, train_standalone
from automq.io import atomic_torch_save, atomic_write_json, atomic_write_text, safe_torch_load
from automq.space.space import SearchSpace
from automq.oneshot.train import (SUPERNET, load_space_data, load_supernet, train_supernet, training_summary,
                          training_text)
from fidelity_stats import (BOOTSTRAP, LOCAL_WINDOW, TARGET_SPEARMAN, TARGET_TAU, column, correlations, fmt_ci,
                            load_study, measured_noise_ceiling, paired_difference, rank_figures, search_figures)
from fidelity_variants import VARIANTS, variants
from provenance import machine, machine_text

ROOT = Path(__file__).resolve().parent
UNIFORM = ("int8", "int4", "fp8_e4m3")
NAME = "oneshot_fidelity"
PARENT = "float_parent"  # init float: <out>/float_parent.pt (its state) and .json (its training record)
CEILING_MARGIN = 0.02  # a tau this close to the simulated noise ceiling is at it (the simulation has its own error)


@dataclass(frozen=True)
class Scale:
    """How much work one study does."""

    purpose: str
    candidates: int  # stratified random candidates (the uniform points come on top)
    pool: int  # random samples the strata are drawn from
    train_images: int  # stand-alone training images (class-balanced subset of the train split)
    epochs: int  # stand-alone training epochs
    val_images: int  # validation images, the same for both scores (at most the space's dataset.val_size)
    calib_images: int  # BN recalibration images of the one-shot estimate
    noise_candidates: int  # candidates retrained with extra seeds
    noise_seeds: int  # seeds per noise candidate (including the main seed 0)
    supernet_epochs: int  # only when no trained supernet is given
    supernet_images: int
    neighbour_pairs: int = 0  # random candidates that get a partner differing in one decision
    init: str = "supernet"  # the stand-alone start unless --init says otherwise
    resamples: int = BOOTSTRAP  # bootstrap resamples of each interval (and noise simulations)
    lr: float | None = None  # the stand-alone learning rate (None: the space's)
    parent_epochs: int = 0  # init float: the float network's training (epochs on parent_images train images)
    parent_images: int = 0


SCALES = {
    "small": Scale("~10 min on one loaded CPU core; a smoke-level study", candidates=20, pool=400, train_images=3000,
                   epochs=1, val_images=5000, calib_images=512, noise_candidates=3, noise_seeds=3, supernet_epochs=3,
                   supernet_images=20000),
    # `medium` and `long` score the same candidates as `small` (same pool and count) with longer stand-alone recipes
    "medium": Scale("~20 min on one idle CPU core, ~35 min on a loaded one", candidates=20, pool=400,
                    train_images=20000, epochs=2, val_images=5000, calib_images=512, noise_candidates=4,
                    noise_seeds=3, supernet_epochs=3, supernet_images=20000),
    "long": Scale("~35-40 min on one idle CPU core; the longest stand-alone recipe a CPU budget allows",
                  candidates=20, pool=400, train_images=40000, epochs=2, val_images=5000, calib_images=512,
                  noise_candidates=4, noise_seeds=3, supernet_epochs=3, supernet_images=20000),
    "full": Scale("for a GPU", candidates=50, pool=5000, train_images=55000, epochs=5, val_images=5000,
                  calib_images=2048, noise_candidates=5, noise_seeds=3, supernet_epochs=30, supernet_images=55000),
    # the study of issue 16: 44 stratified candidates, 20 of them with a neighbour, the uniform points and the
    # smallest (68); 6 neighbour pairs (12 candidates) trained with 3 seeds measure the noise ceiling; every
    # candidate trained alone from scratch. 92 trainings of 50k image-epochs: one of 70k reached 0.866 from scratch
    # in 172 s next to two other jobs on 2 cores (the long scale's 80k took ~82 s alone), so ~1.5 h on an idle
    # core, ~3 h on a loaded one
    "study": Scale("~1.5 h on one idle CPU core, ~3 h on a loaded one: what a search needs (issue 16)",
                   candidates=44, pool=4000,
                   train_images=25000, epochs=2, val_images=10000, calib_images=512, noise_candidates=12,
                   noise_seeds=3, supernet_epochs=3, supernet_images=20000, neighbour_pairs=20, init="scratch"),
    # the same candidates with a longer ground truth; split into resumable parts of one GPU command each with
    # --max-minutes 9 --resume (stand-alone training runs on the machine's CPU cores: give --jobs, one process per
    # core). The first part trains the supernet (on the GPU, resumed from its checkpoint if cut) and scores all 68
    # one-shot, which the JSON keeps before any stand-alone training starts
    "gpu": Scale("GPU machine, in resumable parts of <= 10 min (--max-minutes 9 --resume)", candidates=44, pool=4000,
                 train_images=50000, epochs=3, val_images=10000, calib_images=512, noise_candidates=12,
                 noise_seeds=3, supernet_epochs=8, supernet_images=40000, neighbour_pairs=20, init="scratch"),
    # what a format search needs against the ground truth of the MPQ papers: one architecture (a format-only space,
    # --space experiments/spaces/mpq_only_val10k.yaml), every candidate fine-tuned quantization-aware from one float
    # network of that architecture trained apart from any supernet (init float), the neighbours one layer's weight
    # or activation format apart. The float network trains as long as the default space's 16-epoch supernet (35 s
    # an epoch on 40k images, 2 threads); a pilot fine-tuned 5 candidates for 1 epoch on 20k images at 0.005 and
    # 0.02 (26-34 s each, one thread): seed spread 0.1-0.2 points at 0.005, up to 0.8 at 0.02, where the lowest
    # formats recovered 1.7 points more; so 2 epochs at 0.01 (92 fine-tunes, ~40 min on 2 cores)
    "formats": Scale("~1 h on 2 CPU cores (--jobs 2): per-layer formats of one architecture, each fine-tuned "
                     "from a float network trained apart (issue 16)", candidates=44, pool=4000,
                     train_images=20000, epochs=2, val_images=10000, calib_images=512, noise_candidates=12,
                     noise_seeds=3, supernet_epochs=3, supernet_images=20000, neighbour_pairs=20, init="float",
                     lr=0.01, parent_epochs=16, parent_images=40000),
    # a second sample of candidates for the formats study (with --seed 1 --exclude <the first study>), judged
    # with it by recipe_study.py: its recipe, fewer candidates and no re-runs (what one CPU session has left; the
    # re-runs of the first study measure the ceiling)
    "formats_second": Scale("~45 min on 2 CPU cores (--jobs 2): more candidates for the formats study, its recipe",
                            candidates=24, pool=4000, train_images=20000, epochs=2, val_images=10000,
                            calib_images=512, noise_candidates=0, noise_seeds=1, supernet_epochs=3,
                            supernet_images=20000, neighbour_pairs=12, init="float", lr=0.01, parent_epochs=16,
                            parent_images=40000),
    # the test's scale, on the tests' tiny synthetic space (seconds)
    "tiny": Scale("a test on a tiny synthetic space", candidates=5, pool=60, train_images=256, epochs=4,
                  val_images=200, calib_images=64, noise_candidates=4, noise_seeds=2, supernet_epochs=3,
                  supernet_images=256, neighbour_pairs=3, init="scratch", resamples=100),
    # the same against float fine-tunes, on a format-only copy of that space
    "tiny_formats": Scale("a test on a tiny synthetic format-only space", candidates=5, pool=60, train_images=256,
                          epochs=2, val_images=200, calib_images=64, noise_candidates=4, noise_seeds=2,
                          supernet_epochs=3, supernet_images=256, neighbour_pairs=3, init="float", resamples=100,
                          lr=0.01, parent_epochs=3, parent_images=256),
}
NEIGHBOUR_KINDS = ("w_fmt", "a_fmt", "kernel_size", "depth")
"""The decisions a neighbour pair differs in, taken in turn: one layer's weight or activation format, one block's
kernel, one stage's depth (its last block dropped)."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--space", default="spaces/mbv2_fmnist.yaml")
    parser.add_argument("--supernet", help="a training run folder holding supernet.pt for --space "
                        "(default: train one into <out>/supernet)")
    parser.add_argument("--data", help="dataset root (default: the space's)")
    parser.add_argument("--init", choices=INITS,
                        help="stand-alone start: fine-tune the extracted supernet weights, train from scratch, or "
                        "fine-tune a float network of the (one) architecture trained apart, into <out>/"
                        f"{PARENT}.pt (default: the scale's; scratch for study, gpu and tiny, float for formats)")
    parser.add_argument("--max-minutes", type=float,
                        help="start no new stand-alone training after this many minutes of this run; the outputs "
                        "are then a partial study that --resume continues (a GPU command's time limit)")
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("--seed", type=int, default=0, help="candidate sampling seed")
    parser.add_argument("--exclude", metavar="FILE", type=Path, nargs="*", default=[],
                        help="other studies' JSON whose candidates this one leaves out: with another --seed, a "
                        "second sample of new candidates only, to be judged together with them "
                        "(recipe_study.py --study FILE --study THIS)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each process")
    parser.add_argument("--jobs", type=int, default=1,
                        help="stand-alone trainings at once, each in its own process with --threads threads "
                        "(default 1: in this process)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the study whose outputs are in --out (same scale, tag, supernet and init): "
                        "candidates it already trained stand-alone are kept, not trained again")
    parser.add_argument("--tag", help="appended to the output names (oneshot_fidelity_<scale>_<tag>, "
                        "<FILE stem>_variants_<tag>), e.g. to keep a study of another supernet beside the default one")
    parser.add_argument("--reuse-standalone", metavar="FILE", type=Path,
                        help="a finished study's JSON: re-score only the one-shot side with --variants against "
                        "its stand-alone scores (the supernet must be the one that study used)")
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=list(VARIANTS), metavar="NAME",
                        help="estimator variants for --reuse-standalone, besides the study's own settings "
                        f"(default: all of {list(VARIANTS)})")
    parser.add_argument("--compare-standalone", metavar="FILE", type=Path, nargs="*", default=[],
                        help="with --reuse-standalone: other studies of the same candidates whose (shorter) "
                        "stand-alone scores are ranked against FILE's as fine-tuning estimators")
    parser.add_argument("--compare-oneshot", metavar="FILE", type=Path, nargs="*", default=[],
                        help="with --reuse-standalone: other studies of the same candidates (other supernets) whose "
                        "one-shot scores (accuracy, and loss where recorded) are ranked against FILE's stand-alone "
                        "scores, so a supernet is also judged by a ground truth not fine-tuned from its own weights")
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


def pick_candidates(space: SearchSpace, bitops: Callable[[Candidate], float], scale: Scale, seed: int,
                    exclude: frozenset[str] = frozenset()) -> list[tuple[str, Candidate, dict[str, str]]]:
    """The study's (label, candidate, pairing) triples: the stratified samples, the uniform points, the smallest,
    then a neighbour of ``scale.neighbour_pairs`` samples spread over cost (:func:`neighbour_pairs`), whose
    pairing names its partner (``neighbour_of``) and the decision they differ in (``changed``); none whose id is
    in ``exclude`` (another study's candidates: the uniform points and the smallest recur in every sample)."""
    sampled = stratified_candidates(space, bitops, scale.candidates, scale.pool, seed)
    picked = [("random", c, {}) for c in sampled]
    picked += [(f"uniform {f}", space.uniform(f, f, "largest", clamp=True), {}) for f in UNIFORM]
    picked += [("smallest", space.smallest(), {})]
    bases = [sampled[i] for i in noise_indices(len(sampled), scale.neighbour_pairs)] if scale.neighbour_pairs else []
    picked += [("neighbour", partner, {"neighbour_of": base.id, "changed": decision})
               for base, partner, decision in neighbour_pairs(space, bases, seed)]
    unique: dict[str, tuple[str, Candidate, dict[str, str]]] = {}
    # smallest() may equal a sample: keep the first label
    for label, candidate, pairing in (p for p in picked if p[1].id not in exclude):
        unique.setdefault(candidate.id, (label, candidate, pairing))
    return list(unique.values())


def excluded_ids(studies: Sequence[Path]) -> frozenset[str]:
    """The candidate ids of the studies at ``studies`` (``--exclude``)."""
    return frozenset(row["id"] for path in studies for row in load_study(path)["candidates"])


def neighbour_pairs(space: SearchSpace, bases: Sequence[Candidate], seed: int) -> list[tuple[Candidate, Candidate,
                                                                                              str]]:
    """A partner for each of ``bases`` that differs from it in one decision (base, partner, decision name): the
    kinds of :data:`NEIGHBOUR_KINDS` in turn, the next kind where a base has no such decision to change. The
    partners are new candidates (none equals another candidate of the study)."""
    rng = np.random.default_rng(seed + 1)
    taken = {c.id for c in bases}
    pairs = []
    for k, base in enumerate(bases):
        kinds = NEIGHBOUR_KINDS[k % len(NEIGHBOUR_KINDS):] + NEIGHBOUR_KINDS[:k % len(NEIGHBOUR_KINDS)]
        for kind in kinds:
            found = neighbour(space, base, kind, rng, taken)
            if found:
                taken.add(found[0].id)
                pairs.append((base, *found))
                break
    return pairs


def neighbour(space: SearchSpace, base: Candidate, kind: str, rng: np.random.Generator,
              taken: set[str]) -> tuple[Candidate, str] | None:
    """``base`` with one decision of ``kind`` changed, and that decision's name; ``None`` if it has none that
    gives a candidate outside ``taken``. A depth becomes the next smaller one (the stage's last blocks dropped, so
    no new block needs choices); any other decision takes another of its choices at random."""
    choices, options = space.choices_of(base), {d.name: d.choices for d in space.decisions()}
    names = [n for n in choices if decision_kind(n) == kind]
    for name in (names[i] for i in rng.permutation(len(names))):
        others = [v for v in options[name] if v != choices[name]]
        if kind == "depth":  # one block less: the dropped block's choices simply become inactive
            smaller = [v for v in others if v < choices[name]]
            others = [max(smaller)] if smaller else []
        for value in (others[i] for i in rng.permutation(len(others))):
            partner = space.candidate_from_choices({**choices, name: value})
            if partner.id not in taken:
                return partner, name
    return None


def decision_kind(name: str) -> str:
    """``w_fmt``, ``a_fmt``, ``kernel_size``, ``expand_ratio``, ``depth`` or ``width_mult`` of a decision name
    (``blocks.1.0.conv_pw.w_fmt``, ``stages.2.depth``, ...)."""
    return name.rsplit(".", 1)[-1]


def changed_decisions(space: SearchSpace, a: Candidate, b: Candidate) -> list[str]:
    """The decisions active in both candidates whose values differ."""
    first, second = space.choices_of(a), space.choices_of(b)
    return [name for name in first if name in second and first[name] != second[name]]


def simulated_taus(accs: np.ndarray, sigma: float, sims: int = 2000) -> dict[str, float]:
    """Mean Kendall tau of (a) a noise-free estimator against one stand-alone run and (b) two independent
    stand-alone runs, simulated with Gaussian noise ``sigma``. The true accuracies are the measured ones with
    their spread shrunk by the noise's share of it (measured = true + noise, so the measured spread is too
    wide). (a) is the ceiling for the deterministic one-shot estimate; (b) the stricter seed-to-seed agreement."""
    if accs.size < 3:
        return {"ceiling_tau": math.nan, "seed_to_seed_tau": math.nan}
    spread = accs.var(ddof=1)
    truth = accs.mean() + (accs - accs.mean()) * math.sqrt(max(0.0, 1.0 - sigma**2 / spread)) if spread else accs
    rng = np.random.default_rng(0)
    runs = truth + rng.normal(0, sigma, (sims, 2, truth.size))  # two simulated stand-alone runs per draw
    return {"ceiling_tau": float(np.mean([stats.kendalltau(truth, a).statistic for a, _ in runs])),
            "seed_to_seed_tau": float(np.mean([stats.kendalltau(a, b).statistic for a, b in runs]))}


def noise_floor(rows: list[dict[str, Any]], val_images: int, sims: int = BOOTSTRAP) -> dict[str, Any]:
    """The noise of stand-alone accuracy from the seed repeats, and the rank correlations it allows, over all
    candidates and over the random samples alone: no estimator can rank better than the ground truth agrees
    with itself. Also the binomial standard error of an accuracy measured on ``val_images`` images.

    ``seed_std`` pools the candidates' seed variances; the simulations use ``seed_std_robust``, from their median
    (a seed variance of k runs is sigma^2 chi2(k-1)/(k-1), whose median is known), because one diverged training
    (e.g. 0.54 beside 0.85 and 0.86) would make the pooled figure the noise of that one run."""
    repeats = [r for r in rows if len(r.get("seed_accuracies", [])) > 1]
    if not repeats:
        return {}
    variances = [np.var(r["seed_accuracies"], ddof=1) for r in repeats]
    dof = min(len(r["seed_accuracies"]) for r in repeats) - 1
    pooled = float(np.sqrt(np.mean(variances)))
    sigma = float(np.sqrt(np.median(variances) * dof / stats.chi2.median(dof)))
    done = [r for r in rows if r.get("standalone_accuracy") is not None]
    accs = np.array([r["standalone_accuracy"] for r in done])
    random_accs = np.array([r["standalone_accuracy"] for r in done if r["label"] == "random"])
    first, second = zip(*[r["seed_accuracies"][:2] for r in repeats])
    p = float(accs.mean())
    return {"seed_std": pooled, "seed_std_robust": sigma, "val_standard_error": math.sqrt(p * (1 - p) / val_images),
            "standalone_spread_std": float(accs.std(ddof=1)) if accs.size > 1 else math.nan,
            "random_spread_std": float(random_accs.std(ddof=1)) if random_accs.size > 1 else math.nan,
            **simulated_taus(accs, sigma, sims),
            **{f"{k}_random_only": v for k, v in simulated_taus(random_accs, sigma, sims).items()},
            "seed1_vs_seed2_tau": correlations(first, second)["kendall_tau"],
            "candidates": [{"id": r["id"], "accuracies": r["seed_accuracies"]} for r in repeats]}


def estimator_jitter(rows: list[dict[str, Any]], score: str = "accuracy") -> dict[str, float]:
    """How much one one-shot score (``accuracy`` or ``loss``) moves when only the floating-point summation order
    changes (another torch thread count): the estimate's own noise. Kendall tau between the two estimates of the
    random samples is the best agreement with any ground truth that this noise allows."""
    key = f"oneshot_{score}"
    pairs = [r for r in rows if f"{key}_rethreaded" in r]
    if not pairs:
        return {}
    differences = np.array([r[key] - r[f"{key}_rethreaded"] for r in pairs])
    sampled = [r for r in pairs if r["label"] == "random"]
    return {"difference_std": float(differences.std(ddof=1)) if len(pairs) > 1 else math.nan,
            "max_abs_difference": float(np.abs(differences).max()),
            "self_tau_random_only": correlations(column(sampled, key),
                                                 column(sampled, f"{key}_rethreaded"))["kendall_tau"],
            "oneshot_spread_random_only": float(np.std(column(sampled, key), ddof=1))
            if len(sampled) > 1 else math.nan}


def loss_ranking(done: list[dict[str, Any]], resamples: int = BOOTSTRAP) -> dict[str, Any]:
    """The rank figures of the one-shot loss (lower ranks higher) against the stand-alone accuracy, over all
    candidates and the random samples, with the paired tau gain over ranking by one-shot accuracy; empty for
    studies written before the loss was recorded."""
    if not done or "oneshot_loss" not in done[0]:
        return {}

    def figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return rank_figures([-r["oneshot_loss"] for r in rows], column(rows, "standalone_accuracy"),
                            column(rows, "oneshot_accuracy"), resamples=resamples)

    return {**figures(done), "random_only": figures([r for r in done if r["label"] == "random"])}


def repeated_candidates(rows: list[dict[str, Any]], scale: Scale) -> set[str]:
    """The ids of the candidates trained with ``scale.noise_seeds`` seeds: both members of
    ``noise_candidates / 2`` neighbour pairs spread over cost when the scale has pairs (so the ceiling of the
    neighbour agreement is measured too), else ``noise_candidates`` random samples spread over cost."""
    partners = [r for r in rows if r.get("neighbour_of")]
    if partners:
        chosen = [partners[i] for i in noise_indices(len(partners), scale.noise_candidates // 2)]
        return {r["id"] for r in chosen} | {r["neighbour_of"] for r in chosen}
    return {rows[i]["id"] for i in noise_indices(scale.candidates, scale.noise_candidates)}


def noise_indices(n: int, k: int) -> list[int]:
    """``k`` indices spread over ``0..n-1`` (rows are sorted by BitOps: low, middle and high cost)."""
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)}) if n else []


def plot(rows: list[dict[str, Any]], result: dict[str, Any], path: Path) -> None:
    """Stand-alone accuracy against each recorded one-shot score (accuracy; loss when the study has it)."""
    done = [r for r in rows if r.get("standalone_accuracy") is not None]
    panels = [("oneshot_accuracy", "one-shot accuracy (shared weights, BN recalibrated)", result)]
    if result.get("by_loss"):
        panels.append(("oneshot_loss", "one-shot loss (lower ranks higher; tau of -loss)", result["by_loss"]))
    fig = Figure(figsize=(6 * len(panels), 5), layout="constrained")
    for n, (key, label, figures) in enumerate(panels, 1):
        ax = fig.add_subplot(1, len(panels), n)
        points = ax.scatter(column(done, key), column(done, "standalone_accuracy"),
                            c=np.log10(column(done, "bitops")), cmap="viridis")
        for r in done:
            if r["label"] != "random":
                ax.annotate(r["label"], (r[key], r["standalone_accuracy"]), fontsize=8,
                            textcoords="offset points", xytext=(-5, 4), ha="right")
        ax.set_xlabel(label)
        ax.set_ylabel("stand-alone accuracy")
        ax.set_title(f"n={len(done)}  tau={figures['kendall_tau']:.3f}  rho={figures['spearman']:.3f}  "
                     f"r={figures['pearson']:.3f}", fontsize=10)
        ax.grid(alpha=0.3)
    fig.colorbar(points, ax=fig.axes, label="log10 BitOps")
    fig.savefig(path, dpi=120)


def score_rows(score: str, figures: dict[str, Any], candidates: int) -> list[str]:
    """The study table's two rows of one one-shot score: all candidates (with the target verdict) and the random
    samples alone (``figures["random_only"]``)."""
    def row(f: dict[str, Any], who: str, target: str) -> str:
        gain = (f"{f['tau_gain_over_baseline']:+.3f} [{f['tau_gain_ci95'][0]:+.2f}, {f['tau_gain_ci95'][1]:+.2f}]"
                if "tau_gain_ci95" in f else "")
        return (f"| {score} | {who} | {fmt_ci(f, 'kendall_tau')} | {fmt_ci(f, 'spearman')} | {f['pearson']:.3f} | "
                f"{gain} | {target} |")

    return [row(figures, f"all {candidates}", f"**{verdict(figures['kendall_tau'], figures['spearman'])}**"),
            row(figures["random_only"], "random samples only", "")]


def verdict(tau: float, rho: float) -> str:
    return ("MEETS the target" if tau >= TARGET_TAU else
            "misses tau >= 0.93 but meets Spearman >= 0.9" if rho >= TARGET_SPEARMAN else "MISSES the target")


def search_table(search: dict[str, Any] | None) -> list[str]:
    """The markdown section of :func:`search_fidelity`: each figure with its interval and its ratio to the noise
    ceiling, for the one-shot estimate and for BitOps alone."""
    if not search or not search["oneshot"]["neighbour_pairs"]:
        return []
    ceiling, one = search["noise_ceiling"], search["oneshot"]

    def cell(figures: dict[str, Any], key: str) -> str:
        text = fmt_ci(figures, key) if f"{key}_ci95" in figures else f"{figures[key]:.3f}"
        return text + (f" (ratio {fmt_ci(figures, f'{key}_to_ceiling')})" if f"{key}_to_ceiling" in figures else "")

    lines = [
        "## What a search needs (issue 16)", "",
        f"Kendall tau over all candidates; tau among the {one['local_pairs']} pairs within "
        f"±{100 * search['local_window']:.0f}% BitOps of each other (tau-a: concordant minus discordant over "
        f"pairs); the share of the {one['neighbour_pairs']} neighbour pairs (one decision apart) whose order is "
        "right (ties count one half). Ratio: the figure over the ground truth's noise ceiling.", "",
        "| ranking by | Kendall tau [95% CI] | tau within ±15% BitOps | neighbour pairs ordered right |",
        "|---|---|---|---|",
        *(f"| {label} | " + " | ".join(cell(search[who], key) for key in SEARCH_KEYS) + " |"
          for who, label in (("oneshot", "one-shot accuracy"), ("bitops", "BitOps alone (the baseline)"))),
    ]
    if difference := search.get("oneshot_minus_bitops"):
        lines.append("| one-shot minus BitOps (paired: the same resampled candidates) | "
                     + " | ".join(cell(difference, key) for key in SEARCH_KEYS) + " |")
    if ceiling:
        lines.append("| the ground truth re-run (noise ceiling) | "
                     + " | ".join(f"{ceiling[key]:.3f}" for key in SEARCH_KEYS) + " |")
        lines += ["", f"Noise ceiling: {ceiling['candidates']} candidates ({ceiling['neighbour_pairs']} neighbour "
                  f"pairs, {ceiling['local_pairs']} similar-cost pairs) trained with {ceiling['seeds']} seeds; each "
                  "figure of one seed's accuracies against another's, averaged over the seed pairs."]
    return [*lines, ""]


def markdown(result: dict[str, Any]) -> str:
    s, nf = result["scale"], result["noise_floor"]
    done = [r for r in result["candidates"] if r.get("standalone_accuracy") is not None]
    lr_text = "" if s.get("lr") is None else f" at learning rate {s['lr']:g}"
    lines = [
        f"# One-shot estimator fidelity ({result['scale_name']} scale)", "",
        f"`{result['command']}`", "",
        f"- status: {result['status']}; {len(done)} of {len(result['candidates'])} candidates scored both ways; "
        f"wall time {result['wall_s'] / 60:.1f} min on {result['threads']} torch thread; 1-min load average "
        f"{result['load_start']:.1f} at the start and {result['load_end']:.1f} at the end on {os.cpu_count()} "
        "CPUs (other jobs share the machine)",
        *([f"- machine: {machine_text(result['machine'])}"] if result.get("machine") else []),
        f"- supernet: {result['supernet']} ({training_text(result.get('supernet_training') or {})}); space "
        f"`{result['space']}`",
        f"- scale `{result['scale_name']}` ({s['purpose']}): {s['candidates']} BitOps-stratified candidates + "
        f"uniform {', '.join(UNIFORM)} (largest architecture) + the smallest"
        f"{f' + a neighbour of {n} of the samples' if (n := s.get('neighbour_pairs')) else ''}; one-shot = BN "
        "recalibration on "
        f"{s['calib_images']} train images, accuracy on {s['val_images']} val images; stand-alone = init "
        f"`{result['init']}`, {s['epochs']} epoch(s) on {s['train_images']} train images, the space's SGD recipe"
        f"{lr_text}, "
        f"scored on the same {s['val_images']} val images (the space's validation split holds {result['val_size']}; "
        "more would take images the supernet was trained on)",
        *([parent_text(p)] if (p := result.get("float_parent")) else []),
        *([f"- another sample of candidates (--seed {result.get('seed', 0)}): none of those of "
           + ", ".join(f"`{path}`" for path in excluded) + ", to be judged with them (`recipe_study.py`)"]
          if (excluded := result.get("excluded")) else []),
        "",
        "| one-shot score | candidates | Kendall tau [95% CI] | Spearman [95% CI] | Pearson | "
        f"tau gain over accuracy [95% CI] | target: tau >= {TARGET_TAU} (One-Shot MPQ), at least Spearman >= "
        f"{TARGET_SPEARMAN} |", "|---|---|---:|---:|---:|---:|---|",
        *score_rows("accuracy", result, len(done)),
        *(score_rows("loss (lower ranks higher)", result["by_loss"], len(done)) if result.get("by_loss") else []), "",
        "Intervals: percentile bootstrap over candidates (2000 resamples); the gain is paired (the same resamples).",
        "",
        *search_table(result.get("search_fidelity")),
    ]
    if nf:
        lines += [
            "## Noise floor of the stand-alone accuracy", "",
            f"- {len(nf['candidates'])} candidates trained with {s['noise_seeds']} seeds: seed std of accuracy "
            f"{nf['seed_std']:.4f} pooled, {nf.get('seed_std_robust', nf['seed_std']):.4f} from the median seed "
            "variance (what the simulations below use: robust to one diverged training), against a spread (std "
            f"over candidates) of {nf['standalone_spread_std']:.4f} "
            f"over all candidates and {nf['random_spread_std']:.4f} over the random samples; binomial standard "
            f"error of one accuracy on {s['val_images']} val images: {nf['val_standard_error']:.4f}",
            f"- ceiling (a noise-free estimator against one stand-alone run, simulated): tau {nf['ceiling_tau']:.3f} "
            f"over all candidates, {nf['ceiling_tau_random_only']:.3f} over the random samples",
            f"- two independent stand-alone runs of the whole set agree at tau {nf['seed_to_seed_tau']:.3f} "
            f"(random samples: {nf['seed_to_seed_tau_random_only']:.3f}); seed-1 vs seed-2 tau on the repeated "
            f"candidates: {nf['seed1_vs_seed2_tau']:.3f}",
            "- with init `supernet` or `float` a seed only changes the order of the training images; both scores use "
            "the same validation images, so their sampling error is shared and is not part of this ceiling", ""]
    jitter, loss_jitter = result.get("estimator_jitter"), result.get("estimator_jitter_loss")
    if jitter:
        lines += [
            "## Noise of the one-shot estimate", "",
            f"- every candidate scored again with another torch thread count (the same computation, summed in "
            f"another order): the two accuracies differ by {jitter['difference_std']:.4f} (std), at most "
            f"{jitter['max_abs_difference']:.4f}, against a one-shot spread of "
            f"{jitter['oneshot_spread_random_only']:.4f} over the random samples",
            f"- the two one-shot accuracy rankings of the random samples agree at tau "
            f"{jitter['self_tau_random_only']:.3f}: low-bit rounding turns last-bit differences into different "
            "predictions, so accuracies closer than this noise are ties"]
        if loss_jitter:
            lines.append(f"- the loss moves by {loss_jitter['difference_std']:.5f} (std) against a spread of "
                         f"{loss_jitter['oneshot_spread_random_only']:.5f}; its two rankings of the random samples "
                         f"agree at tau {loss_jitter['self_tau_random_only']:.3f}")
        lines.append("")
    has_loss = "oneshot_loss" in result["candidates"][0]
    lines += ["## Candidates", "", "| id | label | BitOps | one-shot acc |" + (" one-shot loss |" if has_loss else "")
              + " stand-alone acc | seeds |", "|---|---|---:|---:|" + ("---:|" if has_loss else "") + "---:|---|"]
    lines += [f"| `{r['id'][:12]}` | {r['label']} | {r['bitops']:.3e} | {r['oneshot_accuracy']:.4f} | "
              + (f"{r['oneshot_loss']:.4f} | " if has_loss else "")
              + f"{'-' if r.get('standalone_accuracy') is None else format(r['standalone_accuracy'], '.4f')} | "
              f"{', '.join(f'{a:.4f}' for a in r.get('seed_accuracies', []))} |" for r in result["candidates"]]
    lines += ["", "## Reading", "", result["reading"], ""]
    return "\n".join(lines)


def parent_text(parent: dict[str, Any]) -> str:
    """The md line on the float network of ``init float``."""
    return (f"- float network (init `float`): the architecture trained alone in fp32 from scratch, {parent['epochs']} "
            f"epochs on {parent['train_images']} train images (seed {parent['seed']}, {parent['wall_s'] / 60:.1f} "
            f"min), {parent['accuracy']:.4f} on the {parent['accuracy_images']} val images; every stand-alone "
            "score fine-tunes it quantization-aware in the candidate's formats, with no weight of the supernet")


def capacity_trend(rows: list[dict[str, Any]]) -> dict[str, float]:
    """How each score of the random samples follows their BitOps (Kendall tau), and how much stand-alone training
    adds to the one-shot accuracy on average: BitOps is a free ranking that any estimator has to beat."""
    sampled = [r for r in rows if r["label"] == "random" and r.get("standalone_accuracy") is not None]
    bitops = [r["bitops"] for r in sampled]
    oneshot, standalone = column(sampled, "oneshot_accuracy"), column(sampled, "standalone_accuracy")
    return {"bitops_vs_standalone_tau": correlations(bitops, standalone)["kendall_tau"],
            "bitops_vs_oneshot_tau": correlations(bitops, oneshot)["kendall_tau"],
            "beyond_bitops_spearman": beyond_bitops(bitops, oneshot, standalone),
            "mean_standalone_gain": float(np.mean([a - b for a, b in zip(standalone, oneshot)])) if sampled
            else math.nan}


def beyond_bitops(bitops: Sequence[float], oneshot: Sequence[float], standalone: Sequence[float]) -> dict[str, float]:
    """Spearman rho (and its p-value) of the two scores after removing from each its linear trend in log BitOps: does
    the estimate rank candidates of similar cost, which is what a Pareto search needs and what BitOps cannot do?"""
    if len(bitops) < 4:
        return {"rho": math.nan, "p": math.nan}
    design = np.column_stack([np.log10(bitops), np.ones(len(bitops))])

    def residual(values: Sequence[float]) -> np.ndarray:
        y = np.asarray(values, float)
        return y - design @ np.linalg.lstsq(design, y, rcond=None)[0]

    rho, p = stats.spearmanr(residual(oneshot), residual(standalone))
    return {"rho": float(rho), "p": float(p)}


GROUND_TRUTH_LIMITS = {
    "supernet": "init `supernet` makes the ground truth a fine-tune of those same weights, so a short stand-alone "
                "recipe flatters the estimator. ",
    "scratch": "the ground truth trains each candidate from scratch for only {epochs} epoch(s), so it ranks what a "
               "short training reaches, not each candidate's converged accuracy. ",
    "float": "the ground truth fine-tunes one float network for {epochs} epoch(s) in each candidate's formats, as a "
             "user deploys an assignment, and owes nothing to the supernet. ",
}
"""What the ground truth of each ``init`` is, in the reading's last paragraph."""


def reading(result: dict[str, Any]) -> str:
    """A plain-words interpretation of the figures, for the md."""
    tau, nf, rnd, trend = result["kendall_tau"], result["noise_floor"], result["random_only"], result["capacity"]
    done = [r for r in result["candidates"] if r.get("standalone_accuracy") is not None]
    best_random = max((r["standalone_accuracy"] for r in done if r["label"] == "random"), default=math.inf)
    apart = all(r["standalone_accuracy"] > best_random for r in done if r["label"].startswith("uniform"))
    text = [f"The one-shot ranking agrees with the stand-alone ranking at Kendall tau {tau:.3f} over all "
            f"candidates and {rnd['kendall_tau']:.3f} among the random samples alone"
            + ("; the uniform points of the largest architecture stand above every random sample in both scores, "
               "which carries much of the overall figure." if apart else ".")]
    if "tau_gain_ci95" in (by_loss := result.get("by_loss", {})):  # from 3 candidates on
        low, high = by_loss["tau_gain_ci95"]
        text.append(f"Ranked by its one-shot loss instead of its accuracy, the estimate agrees at tau "
                    f"{by_loss['kendall_tau']:.3f} (Spearman {by_loss['spearman']:.3f}; random samples: tau "
                    f"{by_loss['random_only']['kendall_tau']:.3f}), a paired gain of "
                    f"{by_loss['tau_gain_over_baseline']:+.3f} [{low:+.2f}, {high:+.2f}]"
                    + (": accuracy only counts the images whose prediction flips, while the loss also weighs how "
                       "confidently every image is classified, so it tells apart candidates whose accuracies tie."
                       if low > 0 else "; the difference is not measurable with this many candidates."))
    # BitOps is an estimator too: ranking above the simulated ceiling means the few seed repeats overstate the noise
    doubtful = bool(nf) and trend["bitops_vs_standalone_tau"] > nf["ceiling_tau_random_only"] + CEILING_MARGIN
    at_ceiling = bool(nf) and not doubtful and tau >= nf["ceiling_tau"] - CEILING_MARGIN
    if nf:
        ceiling = nf["ceiling_tau"]
        text.append(f"A noise-free estimator would reach tau ~{ceiling:.2f} (random samples: "
                    f"~{nf['ceiling_tau_random_only']:.2f}) against this ground truth, whose seed noise "
                    f"({nf.get('seed_std_robust', nf['seed_std']):.4f}) is compared with the spread of the random "
                    "samples "
                    f"({nf['random_spread_std']:.4f}): the estimator is "
                    + ("at that ceiling" if tau >= ceiling - CEILING_MARGIN else f"{ceiling - tau:.2f} below it")
                    + ("; the 0.93 target is out of reach of this ground truth whatever the estimator."
                       if ceiling < TARGET_TAU and not doubtful else "."))
        if doubtful:
            text.append(f"That ceiling is too low, though: BitOps alone ranks the random samples at tau "
                        f"{trend['bitops_vs_standalone_tau']:.2f}, above their simulated ceiling, so the seed noise "
                        f"measured on {len(nf['candidates'])} candidates overstates the noise of the others.")
    text.append(f"Stand-alone training adds {100 * trend['mean_standalone_gain']:.1f} points to the one-shot "
                f"accuracy of the random samples on average, and their stand-alone accuracy follows BitOps at tau "
                f"{trend['bitops_vs_standalone_tau']:.2f} while their one-shot accuracy does at "
                f"{trend['bitops_vs_oneshot_tau']:.2f}"
                + (": BitOps alone ranks them better than the estimator. The shared weights do not yet show the "
                   "advantage of the larger candidates, which their own training brings out."
                   if trend["bitops_vs_standalone_tau"] > rnd["kendall_tau"] else "."))
    beyond = trend.get("beyond_bitops_spearman")
    if beyond:
        text.append(f"With each score's linear trend in log BitOps removed, the random samples' one-shot and "
                    f"stand-alone accuracies still agree at Spearman {beyond['rho']:.2f} (p = {beyond['p']:.2f}): "
                    + ("the estimate ranks candidates of similar cost, which BitOps cannot." if beyond["p"] < 0.05
                       else "no measurable information beyond cost with this many candidates."))
    if tau < TARGET_TAU and at_ceiling:
        text.append("What limits the figure is the ground truth, not the estimator: a better estimator cannot be "
                    "told from this one until the stand-alone recipe is longer and repeated over more seeds "
                    "(`--scale long`, `--scale full` on a GPU).")
    elif tau < TARGET_TAU:
        trained = result.get("supernet_training") or {}
        text.append(f"What limits it: the supernet is trained for {trained.get('epochs', '?')} epochs on "
                    f"{trained.get('train_images', '?')} images, so its shared weights are far from each "
                    "candidate's own optimum; "
                    + GROUND_TRUTH_LIMITS[result.get("init", "scratch")].format(epochs=result["scale"]["epochs"])
                    + "Measured elsewhere: which "
                    "candidates the supernet trains each step (`supernet_recipes.md`) and estimator settings such "
                    "as a short fine-tune per candidate (`--reuse-standalone`); beyond that, a far longer-trained "
                    "supernet and `--scale full` on a GPU.")
    return " ".join(text)


def study_name(meta: dict[str, Any]) -> str:
    """The outputs' file stem: oneshot_fidelity_<scale>[_<tag>]."""
    return "_".join([NAME, meta["scale_name"], *([meta["tag"]] if meta.get("tag") else [])])


def resumed(path: Path, ids: list[str], meta: dict[str, Any]) -> tuple[list[dict[str, Any]], float]:
    """The rows of an earlier run of the same study (``path``), with their one-shot scores and the stand-alone
    scores it finished, and its wall time; empty when there is none, refused unless that run picked the same
    candidates (``ids``) with the same supernet (folder and training record), scale, init and float network (its
    training record: a network trained again would mix two starting points in one study). The one-shot scores
    are kept, not recomputed, so a resumed part spends its time on training."""
    try:
        earlier = json.loads(path.read_text())
    except FileNotFoundError:
        return [], 0.0
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"--resume: cannot read {path} ({exc}); move it away to start the study afresh") from None
    same = {"scale": earlier.get("scale") == meta["scale"], "init": earlier.get("init") == meta["init"],
            "supernet": earlier.get("supernet") == meta["supernet"]
            and earlier.get("supernet_training") == json.loads(json.dumps(meta["supernet_training"])),
            "candidates": [r.get("id") for r in earlier.get("candidates", [])] == ids,
            "float network": earlier.get("float_parent") == meta.get("float_parent")}
    if differing := [what for what, equal in same.items() if not equal]:
        raise SystemExit(f"--resume: {path} is another study (these differ: {', '.join(differing)}); drop --resume or "
                         "choose another --tag")
    return earlier["candidates"], float(earlier.get("wall_s", 0.0))


def oneshot_rows(picked: list[tuple[str, Candidate, dict[str, str]]], space: SearchSpace, scale: Scale,
                 estimator: OneShotEstimator) -> list[dict[str, Any]]:
    """A row per candidate with its BitOps, pairing and one-shot scores (and those of the same estimate on another
    torch thread count: numerically equivalent, differently rounded arithmetic), no stand-alone score yet."""
    rethreaded = OneShotEstimator(space, estimator.supernet, estimator.data, calib_images=scale.calib_images,
                                  val_images=scale.val_images, threads=2 if estimator.threads == 1 else 1,
                                  finetune_images=0)
    return [{"id": c.id, "label": label, "candidate": c.to_dict(), "bitops": estimator.costs(c)["bitops"],
             **pairing, **oneshot_scores(estimator.estimate(c)),
             **oneshot_scores(rethreaded.estimate(c), "_rethreaded"), "standalone_accuracy": None}
            for label, c, pairing in picked]


SEARCH_KEYS = ("kendall_tau", "kendall_tau_local", "neighbour_agreement")
"""The figures of what a search needs, for the one-shot estimate, BitOps alone and the ground truth's re-runs."""


def search_row(label: str, figures: dict[str, Any]) -> str:
    """A Markdown table row of ``figures``' :data:`SEARCH_KEYS`, each with its interval."""
    return f"| {label} | " + " | ".join(fmt_ci(figures, key) for key in SEARCH_KEYS) + " |"


def search_fidelity(rows: list[dict[str, Any]], resamples: int = BOOTSTRAP) -> dict[str, Any]:
    """:func:`~fidelity_stats.search_figures` of the one-shot accuracy and of BitOps alone against the stand-alone
    accuracy (seed 0), the noise ceiling measured on the re-run candidates, and each figure's ratio to a positive
    ceiling (the interval of a ratio is the figure's interval over the ceiling's value)."""
    done = [r for r in rows if r.get("standalone_accuracy") is not None]
    repeated = [r for r in done if len(r.get("seed_accuracies", [])) > 1]
    truth, cost = column(done, "standalone_accuracy"), column(done, "bitops")
    pairs = partner_indices(done)
    result = {"oneshot": search_figures(column(done, "oneshot_accuracy"), truth, cost, pairs, resamples=resamples),
              "bitops": search_figures(cost, truth, cost, pairs, resamples=resamples),
              "oneshot_minus_bitops": paired_difference(column(done, "oneshot_accuracy"), cost, truth, cost, pairs,
                                                        resamples=resamples),
              "noise_ceiling": measured_noise_ceiling(column(repeated, "seed_accuracies"), column(repeated, "bitops"),
                                                      partner_indices(repeated)),
              "local_window": LOCAL_WINDOW}
    ceiling = result["noise_ceiling"]
    for figures in (result["oneshot"], result["bitops"]):
        for key in SEARCH_KEYS:
            if ceiling and ceiling[key] > 0:  # a ground truth that disagrees with itself has no ceiling to scale by
                figures[f"{key}_to_ceiling"] = figures[key] / ceiling[key]
                if f"{key}_ci95" in figures:
                    figures[f"{key}_to_ceiling_ci95"] = [v / ceiling[key] for v in figures[f"{key}_ci95"]]
    return result


def partner_indices(rows: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Index pairs (base, partner) of the neighbour pairs both of whose members are among ``rows``."""
    index = {r["id"]: k for k, r in enumerate(rows)}
    return [(index[r["neighbour_of"]], index[r["id"]]) for r in rows if r.get("neighbour_of") in index]


def save_rows(rows: list[dict[str, Any]], meta: dict[str, Any], wall_s: float, out: Path) -> None:
    """Rewrite the JSON with the rows so far and no figures (a stopped run leaves them for ``--resume``; the
    bootstrap intervals of :func:`summarize` would cost more than a tiny scale's training)."""
    atomic_write_json(out / f"{study_name(meta)}.json", {**meta, "status": "running", "candidates": rows,
                                                         "wall_s": wall_s})


def summarize(rows: list[dict[str, Any]], meta: dict[str, Any], wall_s: float, out: Path,
              status: str) -> dict[str, Any]:
    """Compute the figures from the rows so far and rewrite the three outputs atomically."""
    done = [r for r in rows if r.get("standalone_accuracy") is not None]
    sampled = [r for r in done if r["label"] == "random"]
    scores = ("oneshot_accuracy", "standalone_accuracy")
    resamples = meta["scale"].get("resamples", BOOTSTRAP)
    search = search_fidelity(rows, resamples)
    headline = {"n_candidates": len(done), "kendall_tau_local": search["oneshot"]["kendall_tau_local"],
                "neighbour_agreement": search["oneshot"]["neighbour_agreement"],
                "noise_ceiling_tau": search["noise_ceiling"].get("kendall_tau", math.nan)}
    result = {**headline, "search_fidelity": search, "candidates": rows,
              **rank_figures(*(column(done, k) for k in scores), resamples=resamples),
              "random_only": rank_figures(*(column(sampled, k) for k in scores), resamples=resamples),
              "by_loss": loss_ranking(done, resamples),
              "noise_floor": noise_floor(rows, meta["scale"]["val_images"], resamples),
              "estimator_jitter": estimator_jitter(rows), "estimator_jitter_loss": estimator_jitter(rows, "loss"),
              **meta, "status": status,
              "capacity": capacity_trend(rows), "wall_s": wall_s, "load_end": os.getloadavg()[0]}
    result["reading"] = reading(result)
    name = study_name(meta)
    atomic_write_json(out / f"{name}.json", result)
    if done:
        plot(rows, result, out / f"{name}.png")
    atomic_write_text(out / f"{name}.md", markdown(result))
    return result


def supernet_run(args: argparse.Namespace, space: SearchSpace, scale: Scale, out: Path) -> Path:
    """The given supernet run folder, or a new one trained into ``out/supernet`` (resumed if started; on the GPU
    when there is one, which computes the same formats as the CPU)."""
    if args.supernet:
        return Path(args.supernet)
    run = out / "supernet"
    if not (run / SUPERNET).exists():
        train_supernet(space, run, epochs=scale.supernet_epochs, train_subset=scale.supernet_images,
                       data_root=args.data, resume=(run / "checkpoint.pt").exists(), device=resolve_device("auto"))
    return run


def float_parent(args: argparse.Namespace, space: SearchSpace, scale: Scale, out: Path) -> dict[str, Any]:
    """``init float``: the training record of the float network that every candidate is fine-tuned from, trained
    into ``<out>/float_parent.pt`` unless an earlier run of the same recipe left it there. A space with
    architecture decisions is refused: each architecture would need a float network of its own."""
    if arch := sorted({decision_kind(d.name) for d in space.decisions()} - {"w_fmt", "a_fmt"}):
        raise SystemExit(f"--init float needs a space whose architecture is fixed (format decisions only, e.g. "
                         f"experiments/spaces/mpq_only_val10k.yaml); {args.space} also decides {', '.join(arch)}")
    recipe = {"epochs": scale.parent_epochs, "train_subset": scale.parent_images, "seed": space.seed}
    state_path, record_path = out / f"{PARENT}.pt", out / f"{PARENT}.json"
    if state_path.exists() and record_path.exists():
        record = json.loads(record_path.read_text())
        if {key: record.get(key) for key in recipe} != recipe:
            raise SystemExit(f"{state_path} was trained with another recipe ({record_path}); move both away or "
                             "choose another --out")
        return record
    data = load_space_data(space, root=args.data, train_subset=scale.parent_images)
    threads = args.jobs * args.threads  # what the fine-tunes will use, before they start
    print(f"training the float network: {scale.parent_epochs} epochs on {len(data.train)} images, {threads} "
          "torch threads", flush=True)
    with torch_threads(threads):
        state, record = train_float_parent(space, space.largest(), data, epochs=scale.parent_epochs,
                                           seed=space.seed, val_images=scale.val_images)
    atomic_torch_save(state, state_path)
    record = {**record, **recipe, "threads": threads}
    atomic_write_json(record_path, record)  # after the state: a record always describes a saved network
    return record


def oneshot_scores(estimate: dict[str, float], suffix: str = "") -> dict[str, float]:
    """The two one-shot scores a row keeps: accuracy and cross-entropy loss on the validation images."""
    return {f"oneshot_accuracy{suffix}": estimate["accuracy"], f"oneshot_loss{suffix}": estimate["loss"]}


class StandaloneTrainer:
    """One stand-alone training of the study's recipe, callable in this process or in a worker process: built from
    file paths and the scale (so it pickles), it loads the space, data and supernet once per process. ``loaded``
    hands it what the calling process already holds (space, data, estimator), so training in that process loads
    nothing twice; worker processes load their own."""

    def __init__(self, space: str, data_root: str | None, scale: Scale, init: str, supernet: str,
                 threads: int, loaded: tuple[SearchSpace, Any, OneShotEstimator] | None = None,
                 parent: Path | None = None) -> None:
        self.space_path, self.data_root, self.scale, self.init = space, data_root, scale, init
        self.supernet_path, self.threads, self.parent_path = supernet, threads, parent
        self._parent: dict[str, torch.Tensor] | None = None
        self._loaded: tuple[SearchSpace, Any, OneShotEstimator | None] | None = None
        if loaded is not None:
            space_, data, estimator = loaded
            self._loaded = space_, data, estimator if init == "supernet" else None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_loaded": None, "_parent": None}  # a worker loads its own copy

    def _load(self) -> tuple[SearchSpace, Any, OneShotEstimator | None]:
        if self._loaded is None:
            torch.set_num_threads(self.threads)
            space = SearchSpace.from_file(self.space_path)
            data = load_space_data(space, root=self.data_root, train_subset=self.scale.train_images)
            estimator = None
            if self.init == "supernet":
                estimator = OneShotEstimator(space, load_supernet(Path(self.supernet_path), space), data,
                                             calib_images=self.scale.calib_images, val_images=self.scale.val_images,
                                             threads=self.threads, finetune_images=0)
            self._loaded = space, data, estimator
        return self._loaded

    def __call__(self, candidate: dict[str, Any], seed: int) -> dict[str, Any]:
        """``candidate`` (as :meth:`Candidate.to_dict`) trained with ``seed``: its accuracy, wall time and host."""
        space, data, estimator = self._load()
        start, chosen = time.perf_counter(), Candidate.from_dict(candidate)
        if estimator is not None:
            accuracy = estimator.finetuned(chosen, epochs=self.scale.epochs, seed=seed)["accuracy"]
        else:
            if self.init == "float" and self._parent is None:
                self._parent = safe_torch_load(self.parent_path)
            accuracy = train_standalone(space, chosen, data, epochs=self.scale.epochs, seed=seed, init=self.init,
                                        parent=self._parent, lr=self.scale.lr,
                                        val_images=self.scale.val_images)["accuracy"]
        return {"accuracy": accuracy, "wall_s": time.perf_counter() - start, "host": platform.node(),
                "torch": torch.__version__, "threads": self.threads}


def run_jobs(trainer: StandaloneTrainer, payloads: list[tuple[dict[str, Any], int]], keys: list[Any], workers: int,
             deadline: float | None) -> Iterator[tuple[Any, dict[str, Any]]]:
    """``(key, trainer(*payload))`` as each training ends, on ``workers`` processes (in this one when 1); none is
    started after ``deadline`` (a ``perf_counter`` time), so a time-limited part stops between trainings."""
    def in_time() -> bool:
        return deadline is None or time.perf_counter() < deadline

    pending = list(zip(keys, payloads))
    if workers <= 1:
        while pending and in_time():
            key, payload = pending.pop(0)
            yield key, trainer(*payload)
        return
    # spawn, not fork: a forked child would inherit this process's torch thread pools
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        running: dict[Future, Any] = {}
        while pending or running:
            while pending and len(running) < workers and in_time():
                key, payload = pending.pop(0)
                running[pool.submit(trainer, *payload)] = key
            if not running:
                return
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                yield running.pop(future), future.result()


def finish_row(row: dict[str, Any], seeds: int) -> None:
    """Fold a row's finished trainings into its stand-alone score (seed 0, the same recipe for every candidate) and,
    for a re-run candidate, every seed's accuracy; the per-training records stay under ``trainings``."""
    results = row.pop("seed_results")
    accs = [results[str(seed)]["accuracy"] for seed in range(seeds)]
    row["standalone_accuracy"] = accs[0]
    if seeds > 1:
        row["seed_accuracies"] = accs
    row["trainings"] = [results[str(seed)] for seed in range(seeds)]


def study(args: argparse.Namespace, space: SearchSpace, out: Path, start: float) -> dict[str, Any]:
    """Score every candidate both ways, rewriting the outputs after each; the final result."""
    scale = SCALES[args.scale]
    run = supernet_run(args, space, scale, out)
    supernet = load_supernet(run, space)
    data = load_space_data(space, root=args.data, train_subset=scale.train_images)
    estimator = OneShotEstimator(space, supernet, data, calib_images=scale.calib_images, val_images=scale.val_images,
                                 threads=args.threads, finetune_images=0)  # the one-shot estimate itself
    def bitops(candidate: Candidate) -> float:
        return estimator.costs(candidate)["bitops"]

    picked = pick_candidates(space, bitops, scale, args.seed, excluded_ids(args.exclude))
    init = args.init or scale.init
    parent = float_parent(args, space, scale, out) if init == "float" else None
    meta = {"command": shlex.join([sys.executable, *sys.argv]), "scale_name": args.scale, "scale": asdict(scale),
            "init": init, "machine": machine(), "supernet": str(run), "supernet_training": training_summary(run),
            "space": args.space, "val_size": space.dataset.val_size,
            "load_start": os.getloadavg()[0],
            "threads": args.threads, "tag": args.tag, "seed": args.seed,
            **({"float_parent": parent} if parent else {}),
            **({"excluded": [str(path) for path in args.exclude]} if args.exclude else {})}
    ids = [c.id for _, c, _ in picked]
    earlier, earlier_s = resumed(out / f"{study_name(meta)}.json", ids, meta) if args.resume else ([], 0.0)
    rows = earlier or oneshot_rows(picked, space, scale, estimator)
    run_start, start = start, start - earlier_s  # the wall time counts the earlier runs' too
    save_rows(rows, meta, time.perf_counter() - start, out)
    noisy = repeated_candidates(rows, scale)
    jobs = [(i, seed) for i, row in enumerate(rows) if row["standalone_accuracy"] is None
            for seed in range(scale.noise_seeds if row["id"] in noisy else 1)
            if str(seed) not in row.get("seed_results", {})]
    trainer = StandaloneTrainer(args.space, args.data, scale, init, str(run), threads=args.threads,
                                loaded=(space, data, estimator), parent=out / f"{PARENT}.pt" if parent else None)
    deadline = None if args.max_minutes is None else run_start + 60 * args.max_minutes
    for (i, seed), record in run_jobs(trainer, [(picked[i][1].to_dict(), seed) for i, seed in jobs], jobs,
                                      args.jobs, deadline):
        row = rows[i]
        row.setdefault("seed_results", {})[str(seed)] = record
        seeds = scale.noise_seeds if row["id"] in noisy else 1
        if len(row["seed_results"]) == seeds:
            finish_row(row, seeds)
            standalone = row.get("seed_accuracies", [row["standalone_accuracy"]])
            print(f"[{i + 1}/{len(rows)}] {row['label']:>14} bitops={row['bitops']:.3e} "
                  f"oneshot={row['oneshot_accuracy']:.4f} standalone={standalone}", flush=True)
        save_rows(rows, meta, time.perf_counter() - start, out)
    if any(row["standalone_accuracy"] is None for row in rows):
        return summarize(rows, meta, time.perf_counter() - start, out, "partial: continue with --resume")
    return summarize(rows, meta, time.perf_counter() - start, out, "complete")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out, start = Path(args.out), time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    space = SearchSpace.from_file(args.space)
    if args.reuse_standalone:
        return variants(args, space, out, start)
    result = study(args, space, out, start)
    print(f"kendall_tau={result['kendall_tau']:.3f} spearman={result['spearman']:.3f} pearson={result['pearson']:.3f}")
    return result


if __name__ == "__main__":
    main()
