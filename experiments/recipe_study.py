"""Supernet recipes judged by what a search needs (issue 16, item 3): each supernet's one-shot ranking of a finished
fidelity study's candidates against that study's stand-alone ground truth.

For every ``--supernet NAME=FOLDER`` it scores the study's candidates one-shot with the study's estimator settings
(its validation and calibration images, one thread; the study's own supernet reuses the scores the study kept),
and reports Kendall tau over all candidates, tau among candidates within 15% BitOps of each other and the share of
neighbour pairs ordered right, each with its bootstrap interval and its ratio to the study's measured noise
ceiling, and each recipe's paired difference from the first one given and from BitOps alone (the same resampled
candidates). ``--rerun`` (the study's ground truth trained again, ``ground_truth_seeds.py``) adds each recipe's
figures over that all-candidate noise ceiling and against the two seeds' mean, a steadier ground truth. A folder
named after one of ``supernet_recipes.py``'s prototype recipes (``format_bn``, ``kernel_transforms``: that script
names its run folders after the recipes) is scored with the prototype patched in, as that script scores it.

    PYTHONPATH=. .venv/bin/python experiments/recipe_study.py \\
        --study experiments/results/oneshot_fidelity_study.json \\
        --supernet default=runs/fidelity/supernet --supernet uniform_1=runs/recipes/uniform_1
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from automq.oneshot.evaluate import OneShotEstimator
from automq.oneshot.train import load_space_data, load_supernet, training_summary, training_text
from automq.space.candidate import Candidate
from automq.space.space import SearchSpace
from fidelity_stats import column, fmt_ci, paired_difference, ratio_to_ceiling, search_figures
from oneshot_fidelity import SEARCH_KEYS, partner_indices, search_row
from provenance import command, judge_and_write, machine, machine_text
from supernet_recipes import RECIPES, prototype

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "supernet_recipes_study"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, required=True, help="a finished fidelity study's JSON")
    parser.add_argument("--supernet", action="append", required=True, metavar="NAME=FOLDER",
                        help="a supernet run folder to judge (repeat; the first is the baseline of the differences)")
    parser.add_argument("--rerun", type=Path, help="the study's ground truth trained again with another seed "
                        "(a ground_truth_seeds.py result JSON)")
    parser.add_argument("--data", help="dataset root (default: the space's)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default=NAME, help=f"the outputs' file stem (default {NAME}), e.g. to keep the "
                        "judgement against another study beside it")
    return parser.parse_args(argv)


def oneshot_scores(study: dict[str, Any], folder: Path, space: SearchSpace, data: Any) -> list[float]:
    """The study's candidates scored one-shot by the supernet in ``folder`` with the study's estimator settings;
    the study's own supernet gives back the scores the study kept (it computed them the same way)."""
    rows = study["candidates"]
    if folder.resolve() == Path(study["supernet"]).resolve():
        return column(rows, "oneshot_accuracy")
    scale = study["scale"]
    with prototype(prototype_of(folder)):
        estimator = OneShotEstimator(space, load_supernet(folder, space), data, calib_images=scale["calib_images"],
                                     val_images=scale["val_images"], threads=1, finetune_images=0)
        return [estimator.estimate(Candidate.from_dict(r["candidate"]))["accuracy"] for r in rows]


def prototype_of(folder: Path) -> str | None:
    """The prototype a ``supernet_recipes.py`` run folder was trained with (the folder bears its recipe's name);
    ``None`` for any other supernet."""
    return RECIPES.get(folder.name, {}).get("prototype")


def judge(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    study = json.loads(args.study.read_text())
    if study.get("status") != "complete":
        raise SystemExit(f"{args.study}: the study is not finished (status {study.get('status')!r}); resume it first")
    space = SearchSpace.from_file(study["space"])
    # the study's training subset: the calibration images are drawn from it
    data = load_space_data(space, root=args.data, train_subset=study["scale"]["train_images"])
    rows = study["candidates"]
    truth, cost, pairs = column(rows, "standalone_accuracy"), column(rows, "bitops"), partner_indices(rows)
    ceiling = study["search_fidelity"]["noise_ceiling"]
    rerun = rerun_accuracies(args.rerun, args.study, len(rows))
    recipes, baseline = [], None
    for spec in args.supernet:
        name, _, folder = spec.partition("=")
        scores = oneshot_scores(study, Path(folder), space, data)
        figures = search_figures(scores, truth, cost, pairs)
        for key in SEARCH_KEYS:
            figures[f"{key}_to_ceiling"] = figures[key] / ceiling[key] if ceiling.get(key, 0) > 0 else None
        recipe = {"name": name, "supernet": folder, "prototype": prototype_of(Path(folder)),
                  "training": training_summary(folder), "figures": figures, "scores": scores,
                  "minus_bitops": paired_difference(scores, cost, truth, cost, pairs)}
        if rerun is not None:
            mean = list((np.asarray(truth) + rerun) / 2)
            recipe.update(ratio_to_ceiling=ratio_to_ceiling(scores, rerun, truth, cost, pairs),
                          against_mean=search_figures(scores, mean, cost, pairs),
                          minus_bitops_against_mean=paired_difference(scores, cost, mean, cost, pairs))
        if baseline is not None:
            recipe["minus_baseline"] = paired_difference(scores, baseline, truth, cost, pairs)
        baseline = scores if baseline is None else baseline
        recipes.append(recipe)
        print(f"{name}: " + ", ".join(f"{key} {figures[key]:.3f}" for key in SEARCH_KEYS), flush=True)
    return {"command": command(), "study": str(args.study), "machine": machine(),
            "n_candidates": len(rows), "noise_ceiling": ceiling, "recipes": recipes,
            **({} if rerun is None else {"rerun": str(args.rerun),
                                         "rerun_ceiling": search_figures(rerun, truth, cost, pairs)}),
            "bitops_alone": study["search_fidelity"]["bitops"], "wall_s": time.perf_counter() - start}


def rerun_accuracies(path: Path | None, study: Path, candidates: int) -> np.ndarray | None:
    """The ``candidates`` of ``study`` trained again (``ground_truth_seeds.py``'s result at ``path``), in the
    study's order."""
    if path is None:
        return None
    rerun = json.loads(path.read_text())
    if Path(rerun["study"]).resolve() != study.resolve() or len(rerun["rerun_accuracies"]) != candidates:
        raise SystemExit(f"{path}: the re-run of another study ({rerun['study']}), not of {study}")
    return np.asarray(rerun["rerun_accuracies"], float)


def markdown(result: dict[str, Any]) -> str:
    base = result["recipes"][0]["name"]
    lines = [
        "# Supernet recipes judged by what a search needs", "",
        f"- command: `{result['command']}`",
        f"- machine: {machine_text(result['machine'])}; wall time "
        f"{result['wall_s'] / 60:.1f} min (one-shot scoring; the supernets' training times are below)",
        f"- ground truth: the {result['n_candidates']} stand-alone candidates of `{result['study']}`; the one-shot "
        "settings are that study's. Ratio: the figure over the ground truth's measured noise ceiling.", "",
        "| supernet | Kendall tau [95% CI] | tau within ±15% BitOps | neighbour pairs ordered right |",
        "|---|---|---|---|",
    ]
    for recipe in result["recipes"]:
        f = recipe["figures"]
        cells = [fmt_ci(f, key) + (f" (ratio {f[f'{key}_to_ceiling']:.2f})" if f[f"{key}_to_ceiling"] else "")
                 for key in SEARCH_KEYS]
        lines.append(f"| {recipe['name']} | " + " | ".join(cells) + " |")
    lines.append(search_row("BitOps alone", result["bitops_alone"]))
    lines.append("| the ground truth re-run (noise ceiling) | "
                 + " | ".join(f"{result['noise_ceiling'][k]:.3f}" for k in SEARCH_KEYS) + " |")
    header = ["| supernet | Kendall tau | tau within ±15% BitOps | neighbour pairs ordered right |",
              "|---|---|---|---|"]
    lines += ["", f"Paired differences from `{base}` (the same resampled candidates and neighbour pairs; a "
              "difference is a result only where its interval excludes 0):", "", *header]
    lines += [search_row(r["name"], r["minus_baseline"]) for r in result["recipes"][1:]]
    lines += ["", "Paired differences from BitOps alone (the baseline any estimator must beat):", "", *header]
    lines += [search_row(r["name"], r["minus_bitops"]) for r in result["recipes"]]
    if "rerun" in result:
        lines += ["", f"With the ground truth trained again (`{result['rerun']}`): each figure over that noise "
                  "ceiling (intervals from the same resamples of both), then against the two seeds' mean and minus "
                  "BitOps alone against it:", "", *header,
                  search_row("the ground truth re-run (noise ceiling)", result["rerun_ceiling"])]
        lines += [search_row(f"{r['name']} over the ceiling", r["ratio_to_ceiling"]) for r in result["recipes"]]
        lines += [search_row(f"{r['name']} against the mean", r["against_mean"]) for r in result["recipes"]]
        lines += [search_row(f"{r['name']} minus BitOps, against the mean", r["minus_bitops_against_mean"])
                  for r in result["recipes"]]
    lines += ["", "Supernets:", ""]
    lines += [f"- {r['name']} (`{r['supernet']}`{prototype_text(r)}): {training_text(r['training'])}"
              for r in result["recipes"]]
    return "\n".join(lines) + "\n"


def prototype_text(recipe: dict[str, Any]) -> str:
    name = recipe.get("prototype")
    return f", trained and scored with the `{name}` prototype of `supernet_recipes.py`" if name else ""


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    return judge_and_write(args, judge, markdown, args.name)


if __name__ == "__main__":
    main()
