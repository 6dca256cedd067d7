"""How far is a candidate's score on the first validation images from the whole split's, and what brings it closer?

A search scores each candidate on the first ``search.eval_size`` images of the validation split (2,000 of 10,000 on
the default space), a shuffled order: those images are one random sample, lucky or unlucky for every candidate
at once (the refinement measures that common part on its probes and subtracts it as its shift) and for each
candidate on its own (which one shift cannot remove and which decides how finely neighbouring candidates are told
apart). This study measures both on real per-image outcomes, with no re-scoring: those that
``shift_by_accuracy.py`` kept (``.npz``) of the 8-epoch benchmark's probe trials and uniform references. It asks
two questions.

**A stratified order.** Ordering the split so that every prefix holds each stratum of images in its share of the
whole split (stratified sampling, each stratum shuffled) keeps every prefix's mean unbiased for every candidate and
removes the part of its luck that lies between strata. Strata: none (the shuffled order of today); the class of an
image; its difficulty (how many of the uniform references, which a refinement scores on the whole split anyway,
classify it right); both. The difficulty comes from the references and every figure is measured on the probes, so
no candidate is scored on a stratification it made. For each, ``--repeats`` random orders (seeded) give, at the
search's and at the race's number of images:

- the common shift: the probes' mean accuracy on the prefix less on the whole split (root mean square over orders);
- the candidate's own error after the refinement's correction: each probe's shift less the probes' mean shift
  (root mean square over probes and orders), what a mean shift leaves in a trial it does not re-score;
- the pair error among close candidates (whole-split accuracies within ``--close`` of each other): the prefix's
  difference of two probes less the whole split's (root mean square), the noise of a neighbour comparison;
- Kendall's tau of the prefix accuracies against the whole split's over the probes (mean over orders).

**A shift per candidate.** Candidates that classify the same images alike share their luck (the uniform references'
shift differs from the probes' mean by 0.3 points, ``shift_by_accuracy.md``), so a trial's own shift might be
better predicted by that of the candidates most like it than by the mean of all: for each probe, under shuffled
orders, the error of the mean shift of every other candidate against that of the ``k`` others that agree with it on
the most prefix images (what a refinement could compute: per-image outcomes on the search's images are all it knows
of a trial it does not re-score, and its re-scored trials would be the neighbours).

Each error is also stated as the number of shuffled images with the same error (a prefix of ``r`` of ``N`` images
has variance proportional to ``1/r - 1/N``).

    PYTHONPATH=. .venv/bin/python experiments/prefix_noise.py experiments/results/shift_by_accuracy.npz
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

from automq.io import atomic_write_json, atomic_write_text
from provenance import command, header, machine

RESULTS = Path(__file__).resolve().parent / "results"
NEIGHBOURS = [1, 5, 10, 20]
"""Numbers of nearest candidates whose mean shift predicts a candidate's own."""


def stratified_order(strata: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation of the images in which every prefix holds each stratum in (nearly) its share of all of them:
    each stratum shuffled, its ``k``-th image placed at ``(k + u) / size`` of the way (``u`` uniform in [0, 1)),
    and the images sorted by that position. One stratum: a plain shuffle."""
    order = rng.permutation(len(strata))
    shuffled = strata[order]
    _, inverse, counts = np.unique(shuffled, return_inverse=True, return_counts=True)
    rank = np.empty(len(strata), dtype=np.int64)  # rank of each shuffled image within its stratum
    by_stratum = np.argsort(inverse, kind="stable")
    rank[by_stratum] = np.arange(len(strata)) - np.repeat(np.cumsum(counts) - counts, counts)
    position = (rank + rng.random(len(strata))) / counts[inverse]
    return order[np.argsort(position, kind="stable")]


def load_outcomes(path: Path) -> dict[str, np.ndarray]:
    """Per-image outcomes (candidates x images, bool), candidate groups and the validation labels of ``path``."""
    with np.load(path) as saved:
        images = int(saved["images"])
        return {"outcomes": np.unpackbits(saved["outcomes"], axis=1)[:, :images].astype(bool),
                "groups": saved["groups"], "labels": saved["labels"]}


def prefix_errors(outcomes: np.ndarray, order: np.ndarray, images: int, close: float) -> dict[str, float]:
    """The figures of one order (see the module docstring) for ``outcomes`` (candidates x images) at a prefix of
    ``images``: squared errors, to be averaged over orders before the root is taken."""
    whole = outcomes.mean(axis=1)
    prefix = outcomes[:, order[:images]].mean(axis=1)
    shift = prefix - whole
    own = shift - shift.mean()
    i, j = np.triu_indices(len(whole), k=1)
    pairs = np.abs(whole[i] - whole[j]) < close
    return {"common_sq": float(shift.mean() ** 2), "own_sq": float(np.mean(own ** 2)),
            "pair_sq": float(np.mean((shift[i] - shift[j])[pairs] ** 2)), "pairs": int(pairs.sum()),
            "tau": float(kendalltau(prefix, whole).statistic)}


def neighbour_shift_errors(outcomes: np.ndarray, evaluated: np.ndarray, order: np.ndarray, images: int,
                           neighbours: list[int]) -> dict[str, float]:
    """Mean squared error, over the ``evaluated`` candidates (a mask), of their shift at a prefix of ``images``
    predicted by the mean shift of every other candidate (``"all"``) and of the ``k`` others that agree with them
    on the most prefix images (``"k"`` for each in ``neighbours``)."""
    prefix = outcomes[:, order[:images]].astype(np.float64)
    shift = prefix.mean(axis=1) - outcomes.mean(axis=1)
    agreement = prefix @ prefix.T + (1 - prefix) @ (1 - prefix).T
    np.fill_diagonal(agreement, -1)  # a candidate is not its own neighbour
    nearest = np.argsort(-agreement, axis=1, kind="stable")
    others = (shift.sum() - shift) / (len(shift) - 1)
    errors = {"all": shift - others, **{str(k): shift - shift[nearest[:, :k]].mean(axis=1) for k in neighbours}}
    return {key: float(np.mean(error[evaluated] ** 2)) for key, error in errors.items()}


def shuffled_equivalent(ratio: float, images: int, total: int) -> float:
    """Shuffled images whose prefix variance is ``ratio`` times that of ``images`` of ``total`` shuffled ones."""
    return 1.0 / (ratio * (1.0 / images - 1.0 / total) + 1.0 / total)


def strata_of(labels: np.ndarray, difficulty: np.ndarray) -> dict[str, np.ndarray]:
    """The stratifications compared: none, class, difficulty, both."""
    classes, levels = labels.astype(np.int64), difficulty.astype(np.int64)
    return {"shuffled": np.zeros(len(labels), dtype=np.int64), "class": classes, "difficulty": levels,
            "class x difficulty": classes * (int(levels.max()) + 1) + levels}


def study(data: dict[str, np.ndarray], prefixes: list[int], repeats: int, close: float, seed: int) -> dict:
    """Both questions' figures at each prefix, over ``repeats`` seeded orders."""
    references, probes = data["groups"] == "reference", data["groups"] == "probe"
    difficulty = data["outcomes"][references].sum(axis=0)  # references right on each image
    stratifications = strata_of(data["labels"], difficulty)
    figures = order_figures(data["outcomes"][probes], stratifications, prefixes, repeats, close, seed)
    return {"probes": int(probes.sum()), "references": int(references.sum()), "images": data["outcomes"].shape[1],
            "strata": {name: int(len(np.unique(s))) for name, s in stratifications.items()},
            "pairs": figures["shuffled"][str(prefixes[0])]["pairs"], "figures": figures,
            "neighbour_shift": neighbour_figures(data["outcomes"], probes, prefixes, repeats, seed)}


def order_figures(outcomes: np.ndarray, stratifications: dict[str, np.ndarray], prefixes: list[int], repeats: int,
                  close: float, seed: int) -> dict[str, dict[str, dict]]:
    """Each stratification's figures at each prefix of ``outcomes`` (candidates x images), with the shuffled
    images that give the same errors."""
    figures = {}
    for name, strata in stratifications.items():
        rng = np.random.default_rng(seed)
        orders = [stratified_order(strata, rng) for _ in range(repeats)]
        figures[name] = {str(r): summarise([prefix_errors(outcomes, o, r, close) for o in orders]) for r in prefixes}
    for by_prefix in figures.values():
        for r, row in by_prefix.items():
            base = figures["shuffled"][r]
            row["equivalent_images"] = {key: shuffled_equivalent(row[key] ** 2 / base[key] ** 2, int(r),
                                                                 outcomes.shape[1]) for key in ("own_rms", "pair_rms")}
    return figures


def neighbour_figures(outcomes: np.ndarray, evaluated: np.ndarray, prefixes: list[int], repeats: int, seed: int
                      ) -> dict[str, dict[str, dict]]:
    """Each shift rule's root mean square error at each prefix over shuffled orders, with the shuffled images
    that give the mean shift of all others the same error."""
    figures = {}
    for r in prefixes:
        rng = np.random.default_rng(seed)
        rows = [neighbour_shift_errors(outcomes, evaluated, rng.permutation(outcomes.shape[1]), r, NEIGHBOURS)
                for _ in range(repeats)]
        squares = {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}
        figures[str(r)] = {key: {"rms": float(np.sqrt(square)), "equivalent_images": shuffled_equivalent(
            square / squares["all"], r, outcomes.shape[1])} for key, square in squares.items()}
    return figures


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    """Root mean squares over orders (with the standard error of the mean square), the mean tau."""
    summary: dict[str, float] = {"pairs": rows[0]["pairs"]}
    for key in ("common", "own", "pair"):
        squares = np.array([r[f"{key}_sq"] for r in rows])
        summary[f"{key}_rms"] = float(np.sqrt(squares.mean()))
        summary[f"{key}_rms_se"] = float(squares.std(ddof=1) / np.sqrt(len(rows)) / (2 * np.sqrt(squares.mean())))
    taus = np.array([r["tau"] for r in rows])
    summary["tau"], summary["tau_se"] = float(taus.mean()), float(taus.std(ddof=1) / np.sqrt(len(taus)))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outcomes", type=Path, help="per-image outcomes kept by shift_by_accuracy.py (.npz)")
    parser.add_argument("--prefixes", type=int, nargs="+", default=[2000, 5000],
                        help="prefix sizes: the search's images, the race's")
    parser.add_argument("--repeats", type=int, default=200, help="random orders per stratification")
    parser.add_argument("--close", type=float, default=0.005, help="whole-split accuracy gap of a close pair")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "prefix_noise", help="path, no suffix")
    args = parser.parse_args(argv)
    if not args.outcomes.is_file():
        parser.error(f"{args.outcomes} is not a file: run experiments/shift_by_accuracy.py first, it writes the .npz")
    started = time.perf_counter()
    result = {"command": command(), "machine": machine(), "outcomes": str(args.outcomes), "repeats": args.repeats,
              "close": args.close, "seed": args.seed,
              **study(load_outcomes(args.outcomes), args.prefixes, args.repeats, args.close, args.seed)}
    result["wall_s"] = time.perf_counter() - started
    atomic_write_json(args.out.with_suffix(".json"), result)
    atomic_write_text(args.out.with_suffix(".md"), markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    points: Callable[[float], str] = lambda value: f"{100 * value:.3f}"  # noqa: E731
    lines = ["# Search-time scores against the whole split: stratified orders and a shift per candidate", "",
             *header(result),
             f"- outcomes: {result['outcomes']} ({result['probes']} probe trials measured, difficulty from "
             f"{result['references']} uniform references; {result['images']} validation images)",
             f"- {result['repeats']} random orders per stratification (seed {result['seed']}); strata: "
             + ", ".join(f"{name} {count}" for name, count in result["strata"].items())
             + f"; close pairs: whole-split accuracies within {100 * result['close']:.1f} points "
             f"({result['pairs']} pairs)", "",
             "Errors in points, root mean square over orders ± its standard error; 'as shuffled': the number of "
             "shuffled images with the same error.", "",
             "| images | order | common shift | own error after the mean shift (as shuffled) | "
             "close-pair error (as shuffled) | Kendall tau |", "|---:|---|---:|---:|---:|---:|"]
    for name, by_prefix in result["figures"].items():
        for r, row in by_prefix.items():
            equivalent = row["equivalent_images"]
            lines.append(
                f"| {r} | {name} | {points(row['common_rms'])} ± {points(row['common_rms_se'])} | "
                f"{points(row['own_rms'])} ± {points(row['own_rms_se'])} ({equivalent['own_rms']:.0f}) | "
                f"{points(row['pair_rms'])} ± {points(row['pair_rms_se'])} ({equivalent['pair_rms']:.0f}) | "
                f"{row['tau']:.3f} ± {row['tau_se']:.3f} |")
    lines += ["", "A shift per candidate (shuffled orders): each probe's own shift predicted by the mean shift of the "
              "others, or of the k others that agree with it on the most prefix images (all other probes and the "
              "references are candidates). Error: root mean square, points (as shuffled: relative to the mean shift of "
              "all others).", "", "| images | shift of | error (as shuffled) |", "|---:|---|---:|"]
    for r, rules in result["neighbour_shift"].items():
        for key, row in rules.items():
            name = "all other candidates" if key == "all" else f"the {key} nearest"
            lines.append(f"| {r} | {name} | {points(row['rms'])} ({row['equivalent_images']:.0f}) |")
    return "\n".join(lines + [""])


if __name__ == "__main__":
    main()
