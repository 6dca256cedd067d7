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

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python experiments/shift_by_accuracy.py runs/fidelity/supernet \\
        runs/bench8p/evolution runs/bench8p/tune-nsga2 ...
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from automq.io import atomic_write_json, atomic_write_text
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("supernet", type=Path, help="the run folder whose estimator the searches used")
    parser.add_argument("searches", type=Path, nargs="+", help="refined search directories")
    parser.add_argument("--out", type=Path, default=RESULTS / "shift_by_accuracy", help="path, no suffix")
    args = parser.parse_args()
    started = time.perf_counter()
    torch.set_num_threads(1)
    estimator = OneShotEstimator.from_run(args.supernet)
    rows = []
    for group, candidate in candidates(args.searches).values():
        outcomes = estimator.correctness(candidate, images=estimator.max_images).bools()
        a, b, c, whole = parts(outcomes, estimator.val_images)
        rows.append({"id": candidate.id, "group": group, "acc_a": a, "acc_b": b, "acc_c": c, "acc_all": whole})
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
              "wall_s": time.perf_counter() - started}
    atomic_write_json(args.out.with_suffix(".json"), result)
    atomic_write_text(args.out.with_suffix(".md"), markdown(result))
    print(markdown(result))


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
    return "\n".join(lines + [""])


if __name__ == "__main__":
    main()
