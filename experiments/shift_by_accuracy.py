"""Does the refinement's shift depend on how accurate a candidate is?

:func:`automq.search.refine.refine_front` moves every trial it does not re-score onto the whole validation split's
scale by one shift: the mean, over probe trials spread over the search, of their accuracy on the search's first
images less their accuracy on the whole split. On the 8-epoch benchmark the strong full-width uniform references
moved by less than the probes' mean (0.2-0.6 points against about 1), which would make one shift under-rate the
strongest candidates that were not re-scored. Regressing each candidate's shift on its whole-split accuracy would
mislead: both share the noise of the same images. So the validation split is cut into three disjoint parts, the
search's images ``A`` (the first ``val_images``), then ``B`` and ``C`` halving the rest; for each candidate the shift
proxy is ``acc(A) - acc(B)`` and its accuracy ``acc(C)``, whose noises are independent. The slope of the one on the
other (least squares, with a bootstrap interval over candidates) says whether the shift depends on accuracy.

The candidates are each search's probe trials (chosen by search order, not by score) and the space's uniform
references among its trials (the strongest full-width candidates), each scored once on the whole split.

A dependence on accuracy would call for a shift that depends on the candidate; but the refinement knows only a
trial's search-time score ``acc(A)``, whose own noise hides much of it. So the study also asks whether a line
predicting the whole split's accuracy from ``acc(A)`` (least squares) beats the one mean shift: fitted on the probes,
how far off are the references (the strong candidates a shift must not under-rate), and over all candidates, the
leave-one-out error of each rule. Every candidate's per-image outcomes on the whole split are kept (``.npz``, bits
packed, with the split's labels) for studies of the split's order that need no re-scoring.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python experiments/shift_by_accuracy.py runs/fidelity/supernet \\
        runs/bench8p/evolution runs/bench8p/tune-nsga2 ...
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from automq.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from automq.oneshot.evaluate import OneShotEstimator
from automq.search.results import load_search_dir
from automq.space.space import SearchSpace
from provenance import command, header, machine

RESULTS = Path(__file__).resolve().parent / "results"
BOOTSTRAP = 2000


def candidates(folders: list[Path]) -> dict[str, tuple[str, object]]:
    """Candidate id -> (group, candidate): every search's probes, then the uniform references among its trials."""
    chosen: dict[str, tuple[str, object]] = {}
    for folder in folders:
        result = load_search_dir(folder)
        probes = set(result.run["refine"]["probes"])
        references = {c.id for c in SearchSpace.from_file(folder / "space.yaml").uniform_references()}
        for trial in result.trials:
            if trial.candidate.id in references:
                chosen[trial.candidate.id] = ("reference", trial.candidate)
            elif trial.number in probes:
                chosen.setdefault(trial.candidate.id, ("probe", trial.candidate))
    return chosen


def parts(outcomes: np.ndarray, first: int) -> tuple[float, float, float, float]:
    """Accuracy on the search's images A, on the halves B and C of the rest, and on all of them."""
    middle = first + (len(outcomes) - first) // 2
    return (float(outcomes[:first].mean()), float(outcomes[first:middle].mean()), float(outcomes[middle:].mean()),
            float(outcomes.mean()))


def slope(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.polyfit(x, y, 1)[0])


def prediction_errors(search: np.ndarray, whole: np.ndarray, probe: np.ndarray) -> dict:
    """How well the one mean shift and a line predict ``whole`` from ``search`` (accuracies, fractions): their
    error on the candidates not in ``probe`` when fitted on those in it (mean and standard error), and each rule's
    leave-one-out root mean square error over all candidates."""

    def rules(fit: np.ndarray) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        shift = float(np.mean(search[fit] - whole[fit]))
        line = np.polyfit(search[fit], whole[fit], 1)
        return {"mean shift": lambda x: x - shift, "line": lambda x: np.polyval(line, x)}

    held_out = ~probe
    errors = {name: rule(search[held_out]) - whole[held_out] for name, rule in rules(probe).items()}
    every = np.arange(len(search))
    loo = {name: [] for name in errors}
    for i in every:
        for name, rule in rules(every != i).items():
            loo[name].append(float(rule(search[i:i + 1])[0] - whole[i]))
    return {"line_slope": slope(search[probe], whole[probe]),
            "held_out": {name: {"n": int(held_out.sum()), "mean": float(e.mean()),
                                "se": float(e.std(ddof=1) / np.sqrt(len(e)))} for name, e in errors.items()},
            "loo_rmse": {name: float(np.sqrt(np.mean(np.square(e)))) for name, e in loo.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("supernet", type=Path, help="the run folder whose estimator the searches used")
    parser.add_argument("searches", type=Path, nargs="+", help="refined search directories")
    parser.add_argument("--out", type=Path, default=RESULTS / "shift_by_accuracy", help="path, no suffix")
    args = parser.parse_args()
    started = time.perf_counter()
    torch.set_num_threads(1)
    estimator = OneShotEstimator.from_run(args.supernet)
    rows, every_outcome = [], []
    for group, candidate in candidates(args.searches).values():
        outcomes = estimator.correctness(candidate, images=estimator.max_images).bools()
        a, b, c, whole = parts(outcomes, estimator.val_images)
        rows.append({"id": candidate.id, "group": group, "acc_a": a, "acc_b": b, "acc_c": c, "acc_all": whole})
        every_outcome.append(outcomes)
    labels = estimator.data.val.tensors[1].numpy()
    save_outcomes(args.out.with_suffix(".npz"), rows, np.array(every_outcome), labels)
    x = np.array([r["acc_c"] for r in rows])
    y = np.array([r["acc_a"] - r["acc_b"] for r in rows])
    rng = np.random.default_rng(0)
    resampled = [slope(x[i], y[i]) for i in (rng.integers(0, len(rows), len(rows)) for _ in range(BOOTSTRAP))]
    groups = {g: [r["acc_a"] - r["acc_all"] for r in rows if r["group"] == g] for g in ("probe", "reference")}
    result = {"command": command(), "machine": machine(), "supernet": str(args.supernet),
              "searches": [str(f) for f in args.searches], "val_images": estimator.val_images,
              "max_images": estimator.max_images, "candidates": rows, "slope": slope(x, y),
              "slope_ci95": [float(np.percentile(resampled, 2.5)), float(np.percentile(resampled, 97.5))],
              "shift_by_group": {g: {"n": len(v), "mean": float(np.mean(v)),
                                     "se": float(np.std(v, ddof=1) / np.sqrt(len(v)))} for g, v in groups.items() if v},
              "prediction": prediction_errors(*(np.array([r[k] for r in rows]) for k in ("acc_a", "acc_all")),
                                              np.array([r["group"] == "probe" for r in rows])),
              "wall_s": time.perf_counter() - started}
    atomic_write_json(args.out.with_suffix(".json"), result)
    atomic_write_text(args.out.with_suffix(".md"), markdown(result))
    print(markdown(result))


def save_outcomes(path: Path, rows: list[dict], outcomes: np.ndarray, labels: np.ndarray) -> None:
    """Per-image outcomes (candidates x images, bits packed along images), candidate ids and groups, and the
    validation labels, written atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, outcomes=np.packbits(outcomes, axis=1), images=outcomes.shape[1], labels=labels,
                        ids=np.array([r["id"] for r in rows]), groups=np.array([r["group"] for r in rows]))
    atomic_write_bytes(path, buffer.getvalue())


def markdown(result: dict) -> str:
    a, rest = result["val_images"], result["max_images"] - result["val_images"]
    low, high = result["slope_ci95"]
    lines = ["# Does the refinement's shift depend on a candidate's accuracy?", "", *header(result),
             f"- supernet: {result['supernet']}; searches: {', '.join(result['searches'])}", "",
             f"A: the search's images (the first {a} validation images); B and C: the two halves of the other {rest}. "
             "Shift proxy acc(A) - acc(B) against accuracy acc(C) (independent images, so independent noise), over "
             f"{len(result['candidates'])} candidates (the searches' probes and uniform references):", "",
             f"- slope: {result['slope']:+.3f} points of shift per point of accuracy, bootstrap 95% interval "
             f"[{low:+.3f}, {high:+.3f}] ({BOOTSTRAP} resamples of the candidates)", "",
             "Shift on the whole split (acc(A) - acc(all), the refinement's definition), points:", "",
             "| group | candidates | mean shift ± SE |", "|---|---:|---|"]
    for group, s in result["shift_by_group"].items():
        lines.append(f"| {group} | {s['n']} | {100 * s['mean']:.2f} ± {100 * s['se']:.2f} |")
    prediction = result["prediction"]
    lines += ["", "Predicting the whole split's accuracy from the search-time score acc(A), the only thing the "
              "refinement knows of a trial it does not re-score: the one mean shift against a least-squares line "
              f"(fitted on the probes: whole = {prediction['line_slope']:.3f} x acc(A) + c). Error = predicted less "
              "measured, points:", "",
              "| rule | fitted on the probes: error on the references (mean ± SE) | leave-one-out RMSE, all |",
              "|---|---:|---:|"]
    for rule, held in prediction["held_out"].items():
        lines.append(f"| {rule} | {100 * held['mean']:+.2f} ± {100 * held['se']:.2f} (n={held['n']}) | "
                     f"{100 * prediction['loo_rmse'][rule]:.3f} |")
    return "\n".join(lines + [""])


if __name__ == "__main__":
    main()
