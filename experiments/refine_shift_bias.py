"""Is the refinement's shift biased by the trials it is measured on?

:func:`automq.search.refine.refine_front` puts the accuracies of the trials it does not re-score onto the whole
validation split's scale by subtracting a shift: the mean, over the trials it re-scored on the whole split, of
their accuracy on the search's images less their accuracy on the whole split. Those trials were chosen because
they scored high on the search's images, partly by luck on those images, so their shift may be larger than that
of the trials the shift is applied to. This script measures it on refined searches: for each, the recorded shift
against the same difference on ``--sample`` trials drawn at random (seeded) from the trials it did not re-score,
each scored on the whole split here, with its standard error.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python experiments/refine_shift_bias.py runs/fidelity/supernet \\
        runs/bench8r/evolution runs/bench8r/tune-nsga2 runs/bench8r/evolution-demo
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
from provenance import command, header, machine

RESULTS = Path(__file__).resolve().parent / "results"


def measure(folder: Path, estimator: OneShotEstimator, sample: int, seed: int) -> dict:
    """The search's recorded shift and the shift of ``sample`` random trials it did not re-score."""
    result = load_search_dir(folder)
    trials = [t for t in result.trials if t.feasible]
    rest = [t for t in trials if t.metrics.get("accuracy_images") != estimator.max_images]
    chosen = np.random.default_rng(seed).choice(len(rest), size=min(sample, len(rest)), replace=False)
    differences = []
    for index in chosen:
        outcomes = estimator.correctness(rest[index].candidate, images=estimator.max_images).bools()
        differences.append(float(outcomes[:estimator.val_images].mean() - outcomes.mean()))
    values = np.array(differences)
    return {"search": folder.name, "trials": len(trials), "refined": len(trials) - len(rest),
            "recorded_shift": result.run["refine"]["shift"][str(estimator.val_images)],
            "random_shift": float(values.mean()), "random_shift_se": float(values.std(ddof=1) / np.sqrt(len(values))),
            "random_trials": len(values)}


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = ["# The refinement's shift: refined trials against random ones", "",
             *header(meta),
             f"- supernet: {meta['supernet']}; the search's images: the first {meta['val_images']} of the "
             f"{meta['max_images']} validation images", "",
             "Shift: accuracy on the search's images less accuracy on the whole split, in points. 'recorded': the "
             "mean over the trials the refinement re-scored (what it subtracts from the others); 'random': the mean "
             "over trials drawn at random from those it did not re-score, ± its standard error.", "",
             "| search | trials | re-scored | recorded shift | random shift | difference |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['search']} | {row['trials']} | {row['refined']} | {100 * row['recorded_shift']:.2f} | "
                     f"{100 * row['random_shift']:.2f} ± {100 * row['random_shift_se']:.2f} "
                     f"(n={row['random_trials']}) | {100 * (row['recorded_shift'] - row['random_shift']):+.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("supernet", type=Path, help="the run folder whose estimator the searches used")
    parser.add_argument("searches", type=Path, nargs="+", help="refined search directories")
    parser.add_argument("--sample", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "refine_shift_bias", help="path, no suffix")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    estimator = OneShotEstimator.from_run(args.supernet)
    rows = [measure(folder, estimator, args.sample, args.seed) for folder in args.searches]
    meta = {"command": command(), "machine": machine(), "supernet": str(args.supernet), "val_images": estimator.val_images, "max_images": estimator.max_images,
            "wall_s": round(time.perf_counter() - started, 1)}
    atomic_write_json(args.out.with_suffix(".json"), {**meta, "rows": rows})
    atomic_write_text(args.out.with_suffix(".md"), markdown(meta, rows))
    print(markdown(meta, rows))


if __name__ == "__main__":
    main()
